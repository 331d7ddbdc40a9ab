"""The legacy volume actions (``POST /volumes/{id}/action``) that predate the
attachments API: os-reserve, os-unreserve, os-begin_detaching,
os-roll_detaching, os-initialize_connection, os-terminate_connection,
os-attach, os-detach, and the admin os-reset_status and os-force_detach.

They are expressed with the same tables and primitives as the new flow: a
legacy connection is an attachment row without an instance until os-attach.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import bindparam

from tether import policy
from tether.connection import ConnectionInfo, Connector
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Tx
from tether.db.records import ATTACHMENTS, VOLUMES, AttachmentRecord, by
from tether.exceptions import AttachmentNotFound, InvalidInput, InvalidVolume
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.volume.api import VolumeAPI

LOG = logging.getLogger(__name__)
_A = ATTACHMENTS.columns
# legacy connections not yet attached to an instance
_PENDING = by(ATTACHMENTS, _A["volume_id"] == bindparam("volume_id"), _A["deleted"].is_(False),
              _A["instance_uuid"].is_(None),
              _A["attach_status"].in_([att_states.ATTACHING, att_states.RESERVED]),
              order=[_A["created_at"]])


class LegacyActions:
    def __init__(self, api: VolumeAPI) -> None:
        self.api = api
        self.db = api.db

    def reserve(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:reserve")
            event = "legacy_reserve_multiattach" if vol.multiattach else "legacy_reserve"
            self.api._transition(c, vol, event)

    def unreserve(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:unreserve")
            if vol.status not in (vol_states.ATTACHING, vol_states.RESERVED):
                raise InvalidVolume(f"Volume {vol.id} must be attaching or reserved to "
                                    f"unreserve, but it is {vol.status}.")
            self.api.settle(c, vol)

    def begin_detaching(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:begin_detaching")
            self.api._transition(c, vol, "begin_detaching")

    def roll_detaching(self, ctx: RequestContext, volume_id: str) -> None:
        """Idempotent: a volume already back in use is left alone."""
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:roll_detaching")
            if vol.status != vol_states.IN_USE:
                self.api._transition(c, vol, "roll_detaching")

    def initialize_connection(self, ctx: RequestContext, volume_id: str,
                              connector: Connector) -> ConnectionInfo:
        values = {"initiator": connector.initiator, "connector": connector.to_dict(),
                  "attached_host": connector.host or None}
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:initialize_connection")
            if vol.status not in vol_states.ATTACHED_STATES:
                raise InvalidVolume(f"Volume {vol.id} must be attaching, reserved or in-use "
                                    f"to initialize a connection, but it is {vol.status}.")
            att = self._pending(c, vol.id, connector)
            if att is None:
                att = ATTACHMENTS.insert(c, {
                    "id": str(uuid.uuid4()), "volume_id": vol.id,
                    "attach_status": att_states.ATTACHING, "attach_mode": "rw",
                    "created_at": models.utcnow(), "deleted": False, **values})
            else:
                ATTACHMENTS.update(c, att.id, values)
        try:
            info = self.api.rpcapi.sync_export(ctx, vol.host or "", volume_id)
        except Exception:
            with self.db.begin() as c:
                ATTACHMENTS.update(c, att.id, {
                    "deleted": True, "deleted_at": models.utcnow(),
                    "attach_status": att_states.DETACHED}, {"instance_uuid": None})
            raise
        if info is None:
            raise InvalidVolume(f"Volume {volume_id} was not exported.")
        return info

    @staticmethod
    def _pending(c: Tx, volume_id: str, connector: Connector
                 ) -> AttachmentRecord | None:
        """A legacy connection of this host not yet attached to an instance."""
        for row in ATTACHMENTS.all(c, _PENDING, {"volume_id": volume_id}):
            if row.initiator in (None, connector.initiator):
                return row
        return None

    def terminate_connection(self, ctx: RequestContext, volume_id: str,
                             connector: Connector) -> None:
        """The initiator stops being admitted for one of its connections (it
        stays admitted while another live attachment uses it)."""
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:terminate_connection")
            rows = [r for r in self.api.live_attachments_of(c, vol.id)
                    if r.initiator == connector.initiator]
            if not rows:
                LOG.info("terminate_connection: volume %s has no connection from %s",
                         vol.id, connector.initiator)
                return
            same_host = [r for r in rows if r.attached_host == (connector.host or None)]
            row = (same_host or rows)[0]
            ATTACHMENTS.update(c, row.id, {"initiator": None})
        try:
            self.api.rpcapi.sync_export(ctx, vol.host or "", volume_id)
        except Exception:
            with self.db.begin() as c:
                ATTACHMENTS.update(c, row.id, {"initiator": row.initiator})
            raise

    def attach(self, ctx: RequestContext, volume_id: str, instance_uuid: str | None,
               mountpoint: str | None, host_name: str | None, mode: str) -> None:
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, "volume:attach")
            pending = ATTACHMENTS.all(c, _PENDING, {"volume_id": vol.id})
            att = next((a for a in pending if host_name is None
                        or a.attached_host in (None, host_name)), None)
            self.api._transition(c, vol, "attach_complete")
            values = {"instance_uuid": instance_uuid, "mountpoint": mountpoint,
                      "attach_mode": mode, "attach_status": att_states.ATTACHED,
                      "attached_at": models.utcnow()}
            if att is None:
                ATTACHMENTS.insert(c, {"id": str(uuid.uuid4()), "volume_id": vol.id,
                                       "created_at": models.utcnow(), "deleted": False,
                                       "attached_host": host_name, **values})
            else:
                ATTACHMENTS.update(c, att.id, {
                    "attached_host": host_name or att.attached_host, **values})

    def _live_ids(self, ctx: RequestContext, volume_id: str, rule: str = "volume:get"
                  ) -> list[str]:
        with self.db.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, rule)
            return [a.id for a in self.api.live_attachments_of(c, vol.id)]

    def detach(self, ctx: RequestContext, volume_id: str, attachment_id: str | None) -> None:
        live = self._live_ids(ctx, volume_id, "volume:detach")
        if attachment_id is None:
            if len(live) != 1:
                raise InvalidInput(f"Volume {volume_id} has {len(live)} attachments: name "
                                   "the one to detach with attachment_id.")
            attachment_id = live[0]
        if attachment_id not in live:
            raise AttachmentNotFound(attachment_id)
        self.api.remove_attachments(ctx, volume_id, [attachment_id])

    def reset_status(self, ctx: RequestContext, volume_id: str, status: str | None,
                     attach_status: str | None) -> None:
        """Admin repair.  ``attach_status: detached`` also drops every
        attachment and the export (a volume's attach status is derived from
        its attachments, so that is what resetting it means here)."""
        policy.authorize(ctx, "volume:reset_status")
        if status is None and attach_status is None:
            raise InvalidInput("os-reset_status needs 'status' and/or 'attach_status'.")
        if status is not None and status not in vol_states.RESETTABLE:
            raise InvalidInput(f"Invalid status {status!r}: expected one of "
                               f"{', '.join(sorted(vol_states.RESETTABLE))}.")
        if attach_status not in (None, "detached"):
            raise InvalidInput(f"Invalid attach_status {attach_status!r}: only 'detached' "
                               "can be set (attachments are created by attaching).")
        live = self._live_ids(ctx, volume_id)
        if attach_status == "detached" and live:
            LOG.warning("admin %s resets attach status of volume %s: dropping %d "
                        "attachment(s)", ctx.user_id, volume_id, len(live))
            self.api.remove_attachments(ctx, volume_id, live)
        if status is not None:
            with self.db.begin() as c:
                vol = self.api._volume(c, ctx, volume_id)
                LOG.warning("admin %s resets volume %s status %s -> %s", ctx.user_id,
                            vol.id, vol.status, status)
                VOLUMES.update(c, vol.id, {"status": status})

    def force_detach(self, ctx: RequestContext, volume_id: str,
                     attachment_id: str | None) -> None:
        policy.authorize(ctx, "volume:force_detach")
        live = self._live_ids(ctx, volume_id)
        if attachment_id is not None:
            if attachment_id not in live:
                raise AttachmentNotFound(attachment_id)
            live = [attachment_id]
        LOG.warning("admin %s force-detaches %d attachment(s) of volume %s", ctx.user_id,
                    len(live), volume_id)
        self.api.remove_attachments(ctx, volume_id, live)
        with self.db.begin() as c:
            vol = VOLUMES.get(c, volume_id)
            if vol is not None and vol.status == vol_states.DETACHING:
                remaining = self.api.live_attachments_of(c, volume_id)
                VOLUMES.update(c, volume_id, {"status": vol_states.settled_status(
                    a.attach_status for a in remaining)})
