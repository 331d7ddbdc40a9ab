"""The block-storage service as the REST API sees it: checks, state
transitions (each one conditional update), and RPC to the volume host.

Every method takes the caller's context and enforces project scoping: a
volume or attachment of another project is reported as not found.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from tether import policy
from tether.connection import ConnectionInfo, Connector
from tether.context import RequestContext
from tether.db import api as db_api
from tether.db import models
from tether.db.api import Database
from tether.exceptions import (
    AttachmentNotFound,
    Conflict,
    InvalidInput,
    InvalidVolume,
    ServiceUnavailable,
    VolumeNotFound,
)
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.volume.rpcapi import VolumeRpcApi

LOG = logging.getLogger(__name__)

MAX_SIZE_GIB = 16384
InUseCheck = Callable[[str, str], bool]  # (instance_uuid, volume_id) -> still attached?


@dataclass(frozen=True)
class AttachmentResult:
    attachment: models.VolumeAttachment
    connection_info: ConnectionInfo | None


def _never_in_use(_instance: str, _volume: str) -> bool:
    return False


class VolumeAPI:
    def __init__(self, db: Database, rpcapi: VolumeRpcApi,
                 pick_host: Callable[[], tuple[str, str]],
                 in_use: InUseCheck = _never_in_use, shared_targets: bool = False) -> None:
        self.db = db
        self.rpcapi = rpcapi
        self.pick_host = pick_host  # -> (host, service uuid) of a live volume service
        self.in_use = in_use
        self.shared_targets = shared_targets

    # -- lookups -----------------------------------------------------------

    def _volume(self, s: Session, ctx: RequestContext, volume_id: str,
                rule: str = "volume:get") -> models.Volume:
        vol = s.get(models.Volume, volume_id) if _is_uuid(volume_id) else None
        if vol is None or vol.deleted or not policy.allowed(ctx, "volume:get", vol.project_id):
            raise VolumeNotFound(volume_id)
        policy.authorize(ctx, rule, vol.project_id)
        return vol

    def _attachment(self, s: Session, ctx: RequestContext, attachment_id: str,
                    rule: str = "attachment:get") -> tuple[models.VolumeAttachment,
                                                           models.Volume]:
        att = s.get(models.VolumeAttachment, attachment_id) if _is_uuid(attachment_id) else None
        vol = s.get(models.Volume, att.volume_id) if att is not None else None
        if (att is None or att.deleted or vol is None
                or not policy.allowed(ctx, "attachment:get", vol.project_id)):
            raise AttachmentNotFound(attachment_id)
        policy.authorize(ctx, rule, vol.project_id)
        return att, vol

    def get(self, ctx: RequestContext, volume_id: str) -> models.Volume:
        with self.db.session() as s:
            vol = self._volume(s, ctx, volume_id)
            s.expunge(vol)
            return vol

    def get_with_attachments(self, ctx: RequestContext, volume_id: str
                             ) -> tuple[models.Volume, list[models.VolumeAttachment]]:
        """The volume and its live attachments, read in one transaction."""
        with self.db.session() as s:
            vol = self._volume(s, ctx, volume_id)
            atts = self._live_attachments(s, [volume_id])[volume_id]
            s.expunge_all()
            return vol, atts

    def live_attachments(self, volume_ids: list[str]) -> dict[str, list[models.VolumeAttachment]]:
        with self.db.session() as s:
            out = self._live_attachments(s, volume_ids)
            s.expunge_all()
            return out

    @staticmethod
    def _live_attachments(s: Session, volume_ids: list[str]
                          ) -> dict[str, list[models.VolumeAttachment]]:
        out: dict[str, list[models.VolumeAttachment]] = {v: [] for v in volume_ids}
        if not volume_ids:
            return out
        rows = s.scalars(select(models.VolumeAttachment).where(
            models.VolumeAttachment.volume_id.in_(volume_ids),
            models.VolumeAttachment.deleted.is_(False)).order_by(
            models.VolumeAttachment.created_at)).all()
        for row in rows:
            out[row.volume_id].append(row)
        return out

    def list_volumes(self, ctx: RequestContext, filters: dict[str, str],
                     all_projects: bool = False,
             limit: int | None = None, marker: str | None = None) -> list[models.Volume]:
        policy.authorize(ctx, "volume:get_all")
        if all_projects:
            policy.authorize(ctx, "volume:all_projects")
        with self.db.session() as s:
            q = select(models.Volume).where(models.Volume.deleted.is_(False))
            if not all_projects:
                q = q.where(models.Volume.project_id == ctx.project_id)
            for key in ("name", "status"):
                if key in filters:
                    q = q.where(getattr(models.Volume, key) == filters[key])
            if "project_id" in filters and all_projects:
                q = q.where(models.Volume.project_id == filters["project_id"])
            q = q.order_by(models.Volume.created_at.desc(), models.Volume.id)
            rows = list(s.scalars(q).all())
            if marker is not None:
                ids = [r.id for r in rows]
                if marker not in ids:
                    raise InvalidInput(f"marker {marker} not found")
                rows = rows[ids.index(marker) + 1:]
            if limit is not None:
                rows = rows[:limit]
            for r in rows:
                s.expunge(r)
            return rows

    # -- volumes -----------------------------------------------------------

    def create(self, ctx: RequestContext, size: int, name: str | None,
               description: str | None, metadata: dict[str, str],
               multiattach: bool) -> models.Volume:
        policy.authorize(ctx, "volume:create")
        if not 1 <= size <= MAX_SIZE_GIB:
            raise InvalidInput(f"Invalid input received: size must be an integer between 1 "
                               f"and {MAX_SIZE_GIB} GiB, got {size}.")
        host, service_uuid = self.pick_host()
        vol = models.Volume(
            id=str(uuid.uuid4()), project_id=ctx.project_id, user_id=ctx.user_id, name=name,
            description=description, size=size, status=vol_states.CREATING,
            multiattach=multiattach, meta=dict(metadata), host=host,
            service_uuid=service_uuid, shared_targets=self.shared_targets,
            created_at=models.utcnow(), deleted=False)
        with self.db.session() as s:
            s.add(vol)
        self.rpcapi.create_volume(ctx, host, vol.id)
        return vol

    def update(self, ctx: RequestContext, volume_id: str, changes: dict[str, Any]
               ) -> models.Volume:
        with self.db.session() as s:
            vol = self._volume(s, ctx, volume_id, "volume:update")
            for key in ("name", "description"):
                if key in changes:
                    setattr(vol, key, changes[key])
            if "metadata" in changes:
                vol.meta = dict(changes["metadata"])
            s.flush()
            s.expunge(vol)
            return vol

    def delete(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.session() as s:
            vol = self._volume(s, ctx, volume_id, "volume:delete")
            self._transition(s, vol, "delete", extra_expected={})
            host = vol.host
        if host is None:
            raise ServiceUnavailable(f"Volume {volume_id} has no host to delete it on.")
        self.rpcapi.delete_volume(ctx, host, volume_id)

    def _transition(self, s: Session, vol: models.Volume, event: str,
                    target: str | None = None,
                    extra_expected: dict[str, Any] | None = None) -> str:
        """Check ``event`` against the table, then apply it conditionally; a
        concurrent change in between is reported like any other bad state."""
        new = vol_states.MACHINE.check(event, vol.status, vol.id, target)
        expected = {"status": vol_states.MACHINE.sources(event), **(extra_expected or {})}
        if not db_api.conditional_update(s, models.Volume, vol.id, {"status": new}, expected):
            s.refresh(vol)
            vol_states.MACHINE.check(event, vol.status, vol.id, target)
            raise Conflict(f"Volume {vol.id} changed state concurrently; retry the request.")
        # the row already holds it: record it on the object without a second UPDATE
        set_committed_value(vol, "status", new)
        return new

    def settle(self, s: Session, vol: models.Volume) -> str:
        """Recompute the volume's status from the attachments that remain."""
        remaining = s.scalars(select(models.VolumeAttachment.attach_status).where(
            models.VolumeAttachment.volume_id == vol.id,
            models.VolumeAttachment.deleted.is_(False))).all()
        target = vol_states.settled_status(remaining)
        if vol.status == target or vol.status not in vol_states.MACHINE.sources("settle"):
            return vol.status
        return self._transition(s, vol, "settle", target)

    # -- attachments (new flow) --------------------------------------------

    def attachment_create(self, ctx: RequestContext, volume_id: str,
                          instance_uuid: str | None, connector: Connector | None,
                          mode: str = "rw") -> AttachmentResult:
        if mode not in ("rw", "ro"):
            raise InvalidInput(f"Invalid attach mode {mode!r}: expected 'rw' or 'ro'.")
        with self.db.session() as s:
            vol = self._volume(s, ctx, volume_id, "attachment:create")
            event = "reserve_multiattach" if vol.multiattach else "reserve"
            if (not vol.multiattach and instance_uuid is not None
                    and vol.status != vol_states.AVAILABLE
                    and self._holds(s, vol.id, instance_uuid)):
                event = "reserve_same_server"
            self._transition(s, vol, event)
            att = models.VolumeAttachment(
                id=str(uuid.uuid4()), volume_id=vol.id, instance_uuid=instance_uuid,
                attach_status=att_states.RESERVED, attach_mode=mode,
                created_at=models.utcnow(), deleted=False)
            s.add(att)
            s.flush()
            s.expunge(att)
        if connector is None:
            return AttachmentResult(att, None)
        return self.attachment_update(ctx, att.id, connector)

    @staticmethod
    def _holds(s: Session, volume_id: str, instance_uuid: str) -> bool:
        """Whether the server already has a live attachment of the volume."""
        return s.scalars(select(models.VolumeAttachment.id).where(
            models.VolumeAttachment.volume_id == volume_id,
            models.VolumeAttachment.instance_uuid == instance_uuid,
            models.VolumeAttachment.deleted.is_(False))).first() is not None

    def attachment_update(self, ctx: RequestContext, attachment_id: str,
                          connector: Connector) -> AttachmentResult:
        with self.db.session() as s:
            att, vol = self._attachment(s, ctx, attachment_id, "attachment:update")
            att_states.MACHINE.check("connect", att.attach_status, att.id)
            if not (vol.status == vol_states.IN_USE and vol.multiattach):
                # (a multiattach volume already in use stays in-use)
                self._transition(s, vol, "attach_start")
            previous = (att.attach_status, att.initiator, att.connector, att.attached_host)
            att.attach_status = att_states.ATTACHING
            att.initiator = connector.initiator
            att.connector = connector.to_dict()
            att.attached_host = connector.host or None
            host = vol.host or ""
            s.flush()
            s.expunge(att)  # what we return: the row as this transaction leaves it
        try:
            info = self.rpcapi.sync_export(ctx, host, vol.id)
        except Exception:
            self._undo_connect(vol.id, attachment_id, previous)
            raise
        if info is None:  # cannot happen: this attachment has an initiator
            raise InvalidVolume(f"Volume {vol.id} was not exported.")
        return AttachmentResult(att, info)

    def _undo_connect(self, volume_id: str, attachment_id: str,
                      previous: tuple[str, str | None, Any, str | None]) -> None:
        with self.db.session() as s:
            att = s.get(models.VolumeAttachment, attachment_id)
            vol = s.get(models.Volume, volume_id)
            if att is None or vol is None:
                return
            (att.attach_status, att.initiator, att.connector, att.attached_host) = previous
            s.flush()
            self.settle(s, vol)

    def attachment_complete(self, ctx: RequestContext, attachment_id: str) -> None:
        with self.db.session() as s:
            att, vol = self._attachment(s, ctx, attachment_id, "attachment:complete")
            att_states.MACHINE.check("complete", att.attach_status, att.id)
            if att.attach_status == att_states.RESERVED or att.initiator is None:
                raise InvalidInput(f"Attachment {att.id} has no connector yet: update it with "
                                   "the host's connector before completing it.")
            self._transition(s, vol, "attach_complete")
            att.attach_status = att_states.ATTACHED
            att.attached_at = models.utcnow()

    def attachment_delete(self, ctx: RequestContext, attachment_id: str) -> list[
            models.VolumeAttachment]:
        """Remove an attachment: its initiator leaves the ACL (the target goes
        with the last one), then the volume settles.  Returns what remains."""
        with self.db.session() as s:
            att, vol = self._attachment(s, ctx, attachment_id, "attachment:delete")
            self._check_deletion_allowed(ctx, att)
            saved, host = self._mark_detached(s, vol, [attachment_id])
        return self._sync_and_settle(ctx, vol.id, host, saved)

    def _check_deletion_allowed(self, ctx: RequestContext, att: models.VolumeAttachment) -> None:
        # CVE-2023-2088: a user must not unmap a LUN a guest still uses
        if ctx.is_service or att.instance_uuid is None or att.connector is None:
            return
        if self.in_use(att.instance_uuid, att.volume_id):
            raise Conflict(f"Volume attachment {att.id} is in use by server "
                           f"{att.instance_uuid}; detach the volume through the compute API "
                           f"(DELETE /servers/{att.instance_uuid}/os-volume_attachments/"
                           f"{att.volume_id}).")

    def remove_attachments(self, ctx: RequestContext, volume_id: str,
                           attachment_ids: list[str]) -> list[models.VolumeAttachment]:
        """Mark attachments detached, make the export match, settle the volume.
        If the target cannot be updated, the attachments are restored."""
        with self.db.session() as s:
            vol = s.get(models.Volume, volume_id)
            if vol is None:
                raise VolumeNotFound(volume_id)
            saved, host = self._mark_detached(s, vol, attachment_ids)
        return self._sync_and_settle(ctx, volume_id, host, saved)

    @staticmethod
    def _mark_detached(s: Session, vol: models.Volume, attachment_ids: list[str]
                       ) -> tuple[list[tuple[str, str]], str]:
        now = models.utcnow()
        rows = [s.get(models.VolumeAttachment, a) for a in attachment_ids]
        saved = [(r.id, r.attach_status) for r in rows if r is not None]
        for r in rows:
            if r is not None:
                att_states.MACHINE.check("delete", r.attach_status, r.id)
                r.attach_status, r.deleted, r.deleted_at, r.detached_at = (
                    att_states.DETACHED, True, now, now)
        return saved, vol.host or ""

    def _sync_and_settle(self, ctx: RequestContext, volume_id: str, host: str,
                         saved: list[tuple[str, str]]) -> list[models.VolumeAttachment]:
        """Export to match the (already marked) attachments, then settle the
        volume; if the target refuses, the attachments come back."""
        try:
            self.rpcapi.sync_export(ctx, host, volume_id)
        except Exception:
            with self.db.session() as s:
                for att_id, status in saved:
                    r = s.get(models.VolumeAttachment, att_id)
                    if r is not None:
                        r.attach_status, r.deleted, r.deleted_at, r.detached_at = (
                            status, False, None, None)
            raise
        with self.db.session() as s:
            vol = s.get(models.Volume, volume_id)
            assert vol is not None
            self.settle(s, vol)
            remaining = self._live_attachments(s, [volume_id])[volume_id]
            s.expunge_all()
            return remaining

    def attachment_get(self, ctx: RequestContext, attachment_id: str
                       ) -> tuple[models.VolumeAttachment, models.Volume]:
        with self.db.session() as s:
            att, vol = self._attachment(s, ctx, attachment_id)
            s.expunge(att)
            s.expunge(vol)
            return att, vol

    def attachment_list(self, ctx: RequestContext, filters: dict[str, str],
                        all_projects: bool = False) -> list[models.VolumeAttachment]:
        policy.authorize(ctx, "attachment:get_all")
        if all_projects:
            policy.authorize(ctx, "volume:all_projects")
        with self.db.session() as s:
            q = select(models.VolumeAttachment).join(
                models.Volume, models.Volume.id == models.VolumeAttachment.volume_id).where(
                models.VolumeAttachment.deleted.is_(False))
            if not all_projects:
                q = q.where(models.Volume.project_id == ctx.project_id)
            if "volume_id" in filters:
                q = q.where(models.VolumeAttachment.volume_id == filters["volume_id"])
            if "instance_id" in filters:
                q = q.where(models.VolumeAttachment.instance_uuid == filters["instance_id"])
            if "status" in filters:
                q = q.where(models.VolumeAttachment.attach_status == filters["status"])
            rows = list(s.scalars(q.order_by(models.VolumeAttachment.created_at)).all())
            for r in rows:
                s.expunge(r)
            return rows

    def connection_info_for(self, ctx: RequestContext, att: models.VolumeAttachment,
                            vol: models.Volume) -> ConnectionInfo | None:
        """connection_info of a connected attachment (re-reads the export)."""
        if att.initiator is None:
            return None
        return self.rpcapi.connection_info(ctx, vol.host or "", vol.id)


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
