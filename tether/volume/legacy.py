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

from tether.connection import ConnectionInfo, Connector
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.models import utcnow
from tether.db.records import AttachmentRecord
from tether.exceptions import AttachmentNotFound, InvalidInput, InvalidVolume
from tether.policies.block_storage import ACTIONS, ADMIN_ACTIONS
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.volume.api import VolumeAPI

LOG = logging.getLogger(__name__)


class LegacyActions:
    def __init__(self, api: VolumeAPI) -> None:
        self.api = api
        self.repo = api.repo

    def reserve(self, ctx: RequestContext, volume_id: str) -> None:
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "reserve")
            event = "legacy_reserve_multiattach" if vol.multiattach else "legacy_reserve"
            self.api.transition(c, vol, event)

    def unreserve(self, ctx: RequestContext, volume_id: str) -> None:
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "unreserve")
            if vol.status not in (vol_states.ATTACHING, vol_states.RESERVED):
                raise InvalidVolume(f"Volume {vol.id} must be attaching or reserved to "
                                    f"unreserve, but it is {vol.status}.")
            self.api.settle(c, vol)

    def begin_detaching(self, ctx: RequestContext, volume_id: str) -> None:
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "begin_detaching")
            self.api.transition(c, vol, "begin_detaching")

    def roll_detaching(self, ctx: RequestContext, volume_id: str) -> None:
        """Idempotent: a volume already back in use is left alone."""
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "roll_detaching")
            if vol.status != vol_states.IN_USE:
                self.api.transition(c, vol, "roll_detaching")

    def initialize_connection(self, ctx: RequestContext, volume_id: str,
                              connector: Connector) -> ConnectionInfo:
        values = {"initiator": connector.initiator, "connector": connector.to_dict(),
                  "attached_host": connector.host or None}
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "initialize_connection")
            if vol.status not in vol_states.ATTACHED_STATES:
                raise InvalidVolume(f"Volume {vol.id} must be attaching, reserved or in-use "
                                    f"to initialize a connection, but it is {vol.status}.")
            att = self._pending(c, vol.id, connector)
            if att is None:
                att = self.repo.new_attachment(c, {
                    "id": str(uuid.uuid4()), "volume_id": vol.id,
                    "attach_status": att_states.ATTACHING, "attach_mode": "rw", **values})
            else:
                self.repo.set_attachment(c, att, values)
        try:
            info = self.api.rpcapi.sync_export(ctx, vol.host or "", volume_id)
        except Exception:
            with self.repo.begin() as c:
                now = self.repo.attachment(c, att.id)
                if now is not None and now.instance_uuid is None and not now.deleted:
                    self.repo.apply(c, att_states.MACHINE, now, "delete",
                                    values=self.repo.deleted_values())
            raise
        if info is None:
            raise InvalidVolume(f"Volume {volume_id} was not exported.")
        return info

    def _pending(self, c: Tx, volume_id: str, connector: Connector
                 ) -> AttachmentRecord | None:
        """A legacy connection of this host not yet attached to an instance."""
        for row in self.repo.pending_legacy(c, volume_id):
            if row.initiator in (None, connector.initiator):
                return row
        return None

    def terminate_connection(self, ctx: RequestContext, volume_id: str,
                             connector: Connector) -> None:
        """The initiator stops being admitted for one of its connections (it
        stays admitted while another live attachment uses it).  Refused while
        a server uses that connection, unless a service asks (CVE-2023-2088)."""
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "terminate_connection")
            row = self._connection(c, vol.id, connector)
        if row is None:
            LOG.info("terminate_connection: volume %s has no connection from %s",
                     volume_id, connector.initiator)
            return
        self.api.check_not_in_use(ctx, [row])
        with self.repo.begin() as c:
            # (only if nobody changed it meanwhile: a concurrent terminate did the work)
            if not self.repo.set_attachment(c, row, {"initiator": None}, {
                    "initiator": row.initiator, "instance_uuid": row.instance_uuid,
                    "deleted": False}):
                LOG.info("terminate_connection: attachment %s changed meanwhile", row.id)
                return
        try:
            self.api.rpcapi.sync_export(ctx, vol.host or "", volume_id)
        except Exception:
            with self.repo.begin() as c:
                self.repo.set_attachment(c, row, {"initiator": row.initiator},
                                         {"initiator": None})
            raise

    def _connection(self, c: Tx, volume_id: str, connector: Connector
                    ) -> AttachmentRecord | None:
        """The live attachment of ``connector``'s initiator a terminate ends
        (the one of the same host first)."""
        rows = [r for r in self.repo.live_attachments(c, volume_id)
                if r.initiator == connector.initiator]
        same_host = [r for r in rows if r.attached_host == (connector.host or None)]
        found = same_host or rows
        return found[0] if found else None

    def attach(self, ctx: RequestContext, volume_id: str, instance_uuid: str | None,
               mountpoint: str | None, host_name: str | None, mode: str) -> None:
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, ACTIONS + "attach")
            pending = self.repo.pending_legacy(c, vol.id)
            att = next((a for a in pending if host_name is None
                        or a.attached_host in (None, host_name)), None)
            self.api.transition(c, vol, "attach_complete")
            values = {"instance_uuid": instance_uuid, "mountpoint": mountpoint,
                      "attach_mode": mode, "attached_at": utcnow()}
            if att is None:
                self.repo.new_attachment(c, {
                    "id": str(uuid.uuid4()), "volume_id": vol.id,
                    "attach_status": att_states.ATTACHED, "attached_host": host_name,
                    **values})
            else:
                self.repo.apply(c, att_states.MACHINE, att, "legacy_attach", values={
                    "attached_host": host_name or att.attached_host, **values})

    def _live(self, ctx: RequestContext, volume_id: str, rule: str = "volume:get"
              ) -> list[AttachmentRecord]:
        with self.repo.begin() as c:
            vol = self.api._volume(c, ctx, volume_id, rule)
            return self.repo.live_attachments(c, vol.id)

    def detach(self, ctx: RequestContext, volume_id: str, attachment_id: str | None) -> None:
        """Refused while a server uses the attachment, unless a service asks
        (CVE-2023-2088)."""
        live = self._live(ctx, volume_id, ACTIONS + "detach")
        if attachment_id is None:
            if len(live) != 1:
                raise InvalidInput(f"Volume {volume_id} has {len(live)} attachments: name "
                                   "the one to detach with attachment_id.")
            attachment_id = live[0].id
        chosen = [a for a in live if a.id == attachment_id]
        if not chosen:
            raise AttachmentNotFound(attachment_id)
        self.api.check_not_in_use(ctx, chosen)
        self.api.remove_attachments(ctx, volume_id, chosen)

    def reset_status(self, ctx: RequestContext, volume_id: str, status: str | None,
                     attach_status: str | None) -> None:
        """Admin repair.  ``attach_status: detached`` also drops every
        attachment and the export (a volume's attach status is derived from
        its attachments, so that is what resetting it means here).  Either
        that or ``status: available`` on a volume a server still uses is
        refused unless a service asks (CVE-2023-2088: the volume could be
        detached, deleted or attached elsewhere under the guest)."""
        live = self._live(ctx, volume_id, ADMIN_ACTIONS + "reset_status")  # 404, then 403
        if status is None and attach_status is None:
            raise InvalidInput("os-reset_status needs 'status' and/or 'attach_status'.")
        if status is not None and status not in vol_states.RESETTABLE:
            raise InvalidInput(f"Invalid status {status!r}: expected one of "
                               f"{', '.join(sorted(map(str, vol_states.RESETTABLE)))}.")
        if attach_status not in (None, "detached"):
            raise InvalidInput(f"Invalid attach_status {attach_status!r}: only 'detached' "
                               "can be set (attachments are created by attaching).")
        if attach_status == "detached" or status == vol_states.AVAILABLE:
            self.api.check_not_in_use(ctx, live)
        if attach_status == "detached" and live:
            LOG.warning("admin %s resets attach status of volume %s: dropping %d "
                        "attachment(s)", ctx.user_id, volume_id, len(live))
            self.api.remove_attachments(ctx, volume_id, live)
        if status is not None:
            with self.repo.begin() as c:
                vol = self.api._volume(c, ctx, volume_id)
                LOG.warning("admin %s resets volume %s status %s -> %s", ctx.user_id,
                            vol.id, vol.status, status)
                self.api.transition(c, vol, "reset", status)

    def force_detach(self, ctx: RequestContext, volume_id: str,
                     attachment_id: str | None) -> None:
        """Admin repair: drop the volume's attachments (or one) and the export.
        Refused for one a server still uses, unless a service asks."""
        live = self._live(ctx, volume_id, ADMIN_ACTIONS + "force_detach")
        if attachment_id is not None:
            live = [a for a in live if a.id == attachment_id]
            if not live:
                raise AttachmentNotFound(attachment_id)
        self.api.check_not_in_use(ctx, live)
        LOG.warning("admin %s force-detaches %d attachment(s) of volume %s", ctx.user_id,
                    len(live), volume_id)
        self.api.remove_attachments(ctx, volume_id, live)
