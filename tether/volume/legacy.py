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

from sqlalchemy import select
from sqlalchemy.orm import Session

from tether import policy
from tether.connection import ConnectionInfo, Connector
from tether.context import RequestContext
from tether.db import models
from tether.exceptions import AttachmentNotFound, InvalidInput, InvalidVolume
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.volume.api import VolumeAPI

LOG = logging.getLogger(__name__)


class LegacyActions:
    def __init__(self, api: VolumeAPI) -> None:
        self.api = api
        self.db = api.db

    def reserve(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:reserve")
            event = "legacy_reserve_multiattach" if vol.multiattach else "legacy_reserve"
            self.api._transition(s, vol, event)

    def unreserve(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:unreserve")
            if vol.status not in (vol_states.ATTACHING, vol_states.RESERVED):
                raise InvalidVolume(f"Volume {vol.id} must be attaching or reserved to "
                                    f"unreserve, but it is {vol.status}.")
            self.api.settle(s, vol)

    def begin_detaching(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:begin_detaching")
            self.api._transition(s, vol, "begin_detaching")

    def roll_detaching(self, ctx: RequestContext, volume_id: str) -> None:
        """Idempotent: a volume already back in use is left alone."""
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:roll_detaching")
            if vol.status != vol_states.IN_USE:
                self.api._transition(s, vol, "roll_detaching")

    def initialize_connection(self, ctx: RequestContext, volume_id: str,
                              connector: Connector) -> ConnectionInfo:
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:initialize_connection")
            if vol.status not in vol_states.ATTACHED_STATES:
                raise InvalidVolume(f"Volume {vol.id} must be attaching, reserved or in-use "
                                    f"to initialize a connection, but it is {vol.status}.")
            att = self._pending(s, vol.id, connector)
            if att is None:
                att = models.VolumeAttachment(
                    id=str(uuid.uuid4()), volume_id=vol.id, attach_status=att_states.ATTACHING,
                    attach_mode="rw", created_at=models.utcnow(), deleted=False)
                s.add(att)
            att.initiator = connector.initiator
            att.connector = connector.to_dict()
            att.attached_host = connector.host or None
            att_id, host = att.id, vol.host or ""
        try:
            info = self.api.rpcapi.sync_export(ctx, host, volume_id)
        except Exception:
            with self.db.session() as s:
                row = s.get(models.VolumeAttachment, att_id)
                if row is not None and row.instance_uuid is None:
                    row.deleted, row.deleted_at = True, models.utcnow()
                    row.attach_status = att_states.DETACHED
            raise
        if info is None:
            raise InvalidVolume(f"Volume {volume_id} was not exported.")
        return info

    @staticmethod
    def _pending(s: Session, volume_id: str, connector: Connector
                 ) -> models.VolumeAttachment | None:
        """A legacy connection of this host not yet attached to an instance."""
        rows = s.scalars(select(models.VolumeAttachment).where(
            models.VolumeAttachment.volume_id == volume_id,
            models.VolumeAttachment.deleted.is_(False),
            models.VolumeAttachment.instance_uuid.is_(None),
            models.VolumeAttachment.attach_status.in_(
                [att_states.ATTACHING, att_states.RESERVED]))).all()
        for row in rows:
            if row.initiator in (None, connector.initiator):
                return row
        return None

    def terminate_connection(self, ctx: RequestContext, volume_id: str,
                             connector: Connector) -> None:
        """The initiator stops being admitted for one of its connections (it
        stays admitted while another live attachment uses it)."""
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:terminate_connection")
            rows = s.scalars(select(models.VolumeAttachment).where(
                models.VolumeAttachment.volume_id == vol.id,
                models.VolumeAttachment.deleted.is_(False),
                models.VolumeAttachment.initiator == connector.initiator).order_by(
                models.VolumeAttachment.created_at)).all()
            if not rows:
                LOG.info("terminate_connection: volume %s has no connection from %s",
                         vol.id, connector.initiator)
                return
            same_host = [r for r in rows if r.attached_host == (connector.host or None)]
            row = (same_host or rows)[0]
            saved = row.initiator
            row.initiator = None
            row_id, host = row.id, vol.host or ""
        try:
            self.api.rpcapi.sync_export(ctx, host, volume_id)
        except Exception:
            with self.db.session() as s:
                r = s.get(models.VolumeAttachment, row_id)
                if r is not None:
                    r.initiator = saved
            raise

    def attach(self, ctx: RequestContext, volume_id: str, instance_uuid: str | None,
               mountpoint: str | None, host_name: str | None, mode: str) -> None:
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:attach")
            pending = s.scalars(select(models.VolumeAttachment).where(
                models.VolumeAttachment.volume_id == vol.id,
                models.VolumeAttachment.deleted.is_(False),
                models.VolumeAttachment.instance_uuid.is_(None),
                models.VolumeAttachment.attach_status.in_(
                    [att_states.ATTACHING, att_states.RESERVED]))).all()
            att = next((a for a in pending if host_name is None
                        or a.attached_host in (None, host_name)), None)
            self.api._transition(s, vol, "attach_complete")
            if att is None:
                att = models.VolumeAttachment(
                    id=str(uuid.uuid4()), volume_id=vol.id, created_at=models.utcnow(),
                    deleted=False, attach_status=att_states.RESERVED)
                s.add(att)
            att.instance_uuid = instance_uuid
            att.mountpoint = mountpoint
            att.attached_host = host_name or att.attached_host
            att.attach_mode = mode
            att.attach_status = att_states.ATTACHED
            att.attached_at = models.utcnow()

    def detach(self, ctx: RequestContext, volume_id: str, attachment_id: str | None) -> None:
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id, "volume:detach")
            live = s.scalars(select(models.VolumeAttachment.id).where(
                models.VolumeAttachment.volume_id == vol.id,
                models.VolumeAttachment.deleted.is_(False))).all()
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
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id)
            live = list(s.scalars(select(models.VolumeAttachment.id).where(
                models.VolumeAttachment.volume_id == vol.id,
                models.VolumeAttachment.deleted.is_(False))).all())
        if attach_status == "detached" and live:
            LOG.warning("admin %s resets attach status of volume %s: dropping %d "
                        "attachment(s)", ctx.user_id, volume_id, len(live))
            self.api.remove_attachments(ctx, volume_id, live)
        if status is not None:
            with self.db.session() as s:
                vol = self.api._volume(s, ctx, volume_id)
                LOG.warning("admin %s resets volume %s status %s -> %s", ctx.user_id,
                            vol.id, vol.status, status)
                vol.status = status
                vol.updated_at = models.utcnow()

    def force_detach(self, ctx: RequestContext, volume_id: str,
                     attachment_id: str | None) -> None:
        policy.authorize(ctx, "volume:force_detach")
        with self.db.session() as s:
            vol = self.api._volume(s, ctx, volume_id)
            live = list(s.scalars(select(models.VolumeAttachment.id).where(
                models.VolumeAttachment.volume_id == vol.id,
                models.VolumeAttachment.deleted.is_(False))).all())
        if attachment_id is not None:
            if attachment_id not in live:
                raise AttachmentNotFound(attachment_id)
            live = [attachment_id]
        LOG.warning("admin %s force-detaches %d attachment(s) of volume %s", ctx.user_id,
                    len(live), volume_id)
        self.api.remove_attachments(ctx, volume_id, live)
        with self.db.session() as s:
            row = s.get(models.Volume, volume_id)
            if row is not None and row.status == vol_states.DETACHING:
                remaining = self.api.live_attachments([volume_id])[volume_id]
                row.status = vol_states.settled_status(a.attach_status for a in remaining)
