"""The block-storage service as the REST API sees it: checks, state
transitions (each one conditional update), and RPC to the volume host.

Every method takes the caller's context and enforces project scoping: a
volume or attachment of another project is reported as not found.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, bindparam

from tether import policy
from tether.connection import ConnectionInfo, Connector
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import (
    ATTACHMENTS,
    VOLUMES,
    AttachmentRecord,
    VolumeRecord,
    by,
    grouped,
)
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
    attachment: AttachmentRecord
    connection_info: ConnectionInfo | None


# the statements of the hot paths, built once
_V, _A = VOLUMES.columns, ATTACHMENTS.columns
_LIVE_OF_VOLUME = Prepared(by(ATTACHMENTS, _A["volume_id"] == bindparam("volume_id"),
                              _A["deleted"].is_(False), order=[_A["created_at"]]))
_LIVE_OF_VOLUMES = by(ATTACHMENTS, _A["volume_id"].in_(bindparam("volume_ids", expanding=True)),
                      _A["deleted"].is_(False), order=[_A["created_at"]])


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

    def _volume(self, c: Tx, ctx: RequestContext, volume_id: str,
                rule: str = "volume:get") -> VolumeRecord:
        vol = VOLUMES.get(c, volume_id) if _is_uuid(volume_id) else None
        if vol is None or vol.deleted or not policy.allowed(ctx, "volume:get", vol.project_id):
            raise VolumeNotFound(volume_id)
        policy.authorize(ctx, rule, vol.project_id)
        return vol

    def _attachment(self, c: Tx, ctx: RequestContext, attachment_id: str,
                    rule: str = "attachment:get") -> tuple[AttachmentRecord, VolumeRecord]:
        att = ATTACHMENTS.get(c, attachment_id) if _is_uuid(attachment_id) else None
        vol = VOLUMES.get(c, att.volume_id) if att is not None else None
        if (att is None or att.deleted or vol is None
                or not policy.allowed(ctx, "attachment:get", vol.project_id)):
            raise AttachmentNotFound(attachment_id)
        policy.authorize(ctx, rule, vol.project_id)
        return att, vol

    def get(self, ctx: RequestContext, volume_id: str) -> VolumeRecord:
        with self.db.begin() as c:
            return self._volume(c, ctx, volume_id)

    def get_with_attachments(self, ctx: RequestContext, volume_id: str
                             ) -> tuple[VolumeRecord, list[AttachmentRecord]]:
        """The volume and its live attachments, read in one transaction."""
        with self.db.begin() as c:
            vol = self._volume(c, ctx, volume_id)
            return vol, self.live_attachments_of(c, volume_id)

    def live_attachments(self, volume_ids: list[str]) -> dict[str, list[AttachmentRecord]]:
        if not volume_ids:
            return {}
        with self.db.begin() as c:
            rows = ATTACHMENTS.all(c, _LIVE_OF_VOLUMES, {"volume_ids": volume_ids})
        return grouped(volume_ids, rows, lambda a: a.volume_id)

    @staticmethod
    def live_attachments_of(c: Tx, volume_id: str) -> list[AttachmentRecord]:
        return ATTACHMENTS.all(c, _LIVE_OF_VOLUME, {"volume_id": volume_id})

    def list_volumes(self, ctx: RequestContext, filters: dict[str, str],
                     all_projects: bool = False,
                     limit: int | None = None, marker: str | None = None) -> list[VolumeRecord]:
        policy.authorize(ctx, "volume:get_all")
        if all_projects:
            policy.authorize(ctx, "volume:all_projects")
        conditions: list[ColumnElement[bool]] = [_V["deleted"].is_(False)]
        if not all_projects:
            conditions.append(_V["project_id"] == ctx.project_id)
        for key in ("name", "status"):
            if key in filters:
                conditions.append(_V[key] == filters[key])
        if "project_id" in filters and all_projects:
            conditions.append(_V["project_id"] == filters["project_id"])
        with self.db.begin() as c:
            rows = VOLUMES.all(c, by(VOLUMES, *conditions,
                                     order=[_V["created_at"].desc(), _V["id"]]))
        if marker is not None:
            ids = [r.id for r in rows]
            if marker not in ids:
                raise InvalidInput(f"marker {marker} not found")
            rows = rows[ids.index(marker) + 1:]
        return rows if limit is None else rows[:limit]

    # -- volumes -----------------------------------------------------------

    def create(self, ctx: RequestContext, size: int, name: str | None,
               description: str | None, metadata: dict[str, str],
               multiattach: bool) -> VolumeRecord:
        policy.authorize(ctx, "volume:create")
        if not 1 <= size <= MAX_SIZE_GIB:
            raise InvalidInput(f"Invalid input received: size must be an integer between 1 "
                               f"and {MAX_SIZE_GIB} GiB, got {size}.")
        host, service_uuid = self.pick_host()
        with self.db.begin() as c:
            vol = VOLUMES.insert(c, {
                "id": str(uuid.uuid4()), "project_id": ctx.project_id,
                "user_id": ctx.user_id, "name": name, "description": description,
                "size": size, "status": vol_states.CREATING, "multiattach": multiattach,
                "meta": dict(metadata), "host": host, "service_uuid": service_uuid,
                "shared_targets": self.shared_targets, "created_at": models.utcnow(),
                "deleted": False})
        self.rpcapi.create_volume(ctx, host, vol.id)
        return vol

    def update(self, ctx: RequestContext, volume_id: str, changes: dict[str, Any]
               ) -> VolumeRecord:
        with self.db.begin() as c:
            vol = self._volume(c, ctx, volume_id, "volume:update")
            values: dict[str, Any] = {
                k: changes[k] for k in ("name", "description") if k in changes}
            if "metadata" in changes:
                values["meta"] = dict(changes["metadata"])
            if not values:
                return vol
            VOLUMES.update(c, vol.id, values)
            return self._volume(c, ctx, volume_id)

    def delete(self, ctx: RequestContext, volume_id: str) -> None:
        with self.db.begin() as c:
            vol = self._volume(c, ctx, volume_id, "volume:delete")
            self._transition(c, vol, "delete")
        if vol.host is None:
            raise ServiceUnavailable(f"Volume {volume_id} has no host to delete it on.")
        self.rpcapi.delete_volume(ctx, vol.host, volume_id)

    def _transition(self, c: Tx, vol: VolumeRecord, event: str,
                    target: str | None = None) -> str:
        """Check ``event`` against the table, then apply it conditionally; a
        concurrent change in between is reported like any other bad state.
        Returns the new status."""
        new = vol_states.MACHINE.check(event, vol.status, vol.id, target)
        if not VOLUMES.update(c, vol.id, {"status": new},
                              {"status": vol_states.MACHINE.sources(event)}):
            now = VOLUMES.get(c, vol.id)
            vol_states.MACHINE.check(event, now.status if now else "deleted", vol.id, target)
            raise Conflict(f"Volume {vol.id} changed state concurrently; retry the request.")
        return new

    def settle(self, c: Tx, vol: VolumeRecord) -> str:
        """Recompute the volume's status from the attachments that remain."""
        remaining = [a.attach_status for a in self.live_attachments_of(c, vol.id)]
        target = vol_states.settled_status(remaining)
        if vol.status == target or vol.status not in vol_states.MACHINE.sources("settle"):
            return vol.status
        return self._transition(c, vol, "settle", target)

    # -- attachments (new flow) --------------------------------------------

    def attachment_create(self, ctx: RequestContext, volume_id: str,
                          instance_uuid: str | None, connector: Connector | None,
                          mode: str = "rw") -> AttachmentResult:
        if mode not in ("rw", "ro"):
            raise InvalidInput(f"Invalid attach mode {mode!r}: expected 'rw' or 'ro'.")
        with self.db.begin() as c:
            vol = self._volume(c, ctx, volume_id, "attachment:create")
            event = "reserve_multiattach" if vol.multiattach else "reserve"
            if (not vol.multiattach and instance_uuid is not None
                    and vol.status != vol_states.AVAILABLE
                    and any(a.instance_uuid == instance_uuid
                            for a in self.live_attachments_of(c, vol.id))):
                event = "reserve_same_server"
            self._transition(c, vol, event)
            att = ATTACHMENTS.insert(c, {
                "id": str(uuid.uuid4()), "volume_id": vol.id, "instance_uuid": instance_uuid,
                "attach_status": att_states.RESERVED, "attach_mode": mode,
                "created_at": models.utcnow(), "deleted": False})
        if connector is None:
            return AttachmentResult(att, None)
        return self.attachment_update(ctx, att.id, connector)

    def attachment_update(self, ctx: RequestContext, attachment_id: str,
                          connector: Connector) -> AttachmentResult:
        with self.db.begin() as c:
            att, vol = self._attachment(c, ctx, attachment_id, "attachment:update")
            att_states.MACHINE.check("connect", att.attach_status, att.id)
            if not (vol.status == vol_states.IN_USE and vol.multiattach):
                # (a multiattach volume already in use stays in-use)
                self._transition(c, vol, "attach_start")
            previous = {"attach_status": att.attach_status, "initiator": att.initiator,
                        "connector": att.connector, "attached_host": att.attached_host,
                        "mountpoint": att.mountpoint}
            values: dict[str, Any] = {
                "attach_status": att_states.ATTACHING, "initiator": connector.initiator,
                "connector": connector.to_dict(), "attached_host": connector.host or None,
                "mountpoint": connector.mountpoint or att.mountpoint}
            ATTACHMENTS.update(c, att.id, values)
            att = dataclasses.replace(att, **values)  # the row as this transaction leaves it
        try:
            info = self.rpcapi.sync_export(ctx, vol.host or "", vol.id)
        except Exception:
            with self.db.begin() as c:
                ATTACHMENTS.update(c, attachment_id, previous)
                now = VOLUMES.get(c, vol.id)
                if now is not None:
                    self.settle(c, now)
            raise
        if info is None:  # cannot happen: this attachment has an initiator
            raise InvalidVolume(f"Volume {vol.id} was not exported.")
        return AttachmentResult(att, info)

    def attachment_complete(self, ctx: RequestContext, attachment_id: str) -> None:
        with self.db.begin() as c:
            att, vol = self._attachment(c, ctx, attachment_id, "attachment:complete")
            att_states.MACHINE.check("complete", att.attach_status, att.id)
            if att.attach_status == att_states.RESERVED or att.initiator is None:
                raise InvalidInput(f"Attachment {att.id} has no connector yet: update it with "
                                   "the host's connector before completing it.")
            self._transition(c, vol, "attach_complete")
            ATTACHMENTS.update(c, att.id, {"attach_status": att_states.ATTACHED,
                                           "attached_at": models.utcnow()})

    def attachment_delete(self, ctx: RequestContext, attachment_id: str
                          ) -> list[AttachmentRecord]:
        """Remove an attachment: its initiator leaves the ACL (the target goes
        with the last one), then the volume settles.  Returns what remains."""
        with self.db.begin() as c:
            att, vol = self._attachment(c, ctx, attachment_id, "attachment:delete")
            self._check_deletion_allowed(ctx, att)
            saved = self._mark_detached(c, [att])
        return self._sync_and_settle(ctx, vol, saved)

    def _check_deletion_allowed(self, ctx: RequestContext, att: AttachmentRecord) -> None:
        # CVE-2023-2088: a user must not unmap a LUN a guest still uses
        if ctx.is_service or att.instance_uuid is None or att.connector is None:
            return
        if self.in_use(att.instance_uuid, att.volume_id):
            raise Conflict(f"Volume attachment {att.id} is in use by server "
                           f"{att.instance_uuid}; detach the volume through the compute API "
                           f"(DELETE /servers/{att.instance_uuid}/os-volume_attachments/"
                           f"{att.volume_id}).")

    def remove_attachments(self, ctx: RequestContext, volume_id: str,
                           attachment_ids: list[str]) -> list[AttachmentRecord]:
        """Mark attachments detached, make the export match, settle the volume.
        If the target cannot be updated, the attachments are restored."""
        with self.db.begin() as c:
            vol = VOLUMES.get(c, volume_id)
            if vol is None:
                raise VolumeNotFound(volume_id)
            rows = [ATTACHMENTS.get(c, a) for a in attachment_ids]
            saved = self._mark_detached(c, [r for r in rows if r is not None])
        return self._sync_and_settle(ctx, vol, saved)

    @staticmethod
    def _mark_detached(c: Tx, atts: list[AttachmentRecord]) -> list[tuple[str, str]]:
        """Soft-delete the attachments; what they were, to restore them."""
        now = models.utcnow()
        for att in atts:
            att_states.MACHINE.check("delete", att.attach_status, att.id)
            if not ATTACHMENTS.update(c, att.id, {
                    "attach_status": att_states.DETACHED, "deleted": True, "deleted_at": now,
                    "detached_at": now}, {"deleted": False}):
                raise Conflict(f"Attachment {att.id} was deleted concurrently.")
        return [(a.id, a.attach_status) for a in atts]

    def _sync_and_settle(self, ctx: RequestContext, vol: VolumeRecord,
                         saved: list[tuple[str, str]]) -> list[AttachmentRecord]:
        """Export to match the (already marked) attachments, then settle the
        volume; if the target refuses, the attachments come back."""
        try:
            self.rpcapi.sync_export(ctx, vol.host or "", vol.id)
        except Exception:
            with self.db.begin() as c:
                for att_id, status in saved:
                    ATTACHMENTS.update(c, att_id, {"attach_status": status, "deleted": False,
                                                   "deleted_at": None, "detached_at": None})
            raise
        with self.db.begin() as c:
            now = VOLUMES.get(c, vol.id)
            assert now is not None
            self.settle(c, now)
            return self.live_attachments_of(c, vol.id)

    def attachment_get(self, ctx: RequestContext, attachment_id: str
                       ) -> tuple[AttachmentRecord, VolumeRecord]:
        with self.db.begin() as c:
            return self._attachment(c, ctx, attachment_id)

    def attachment_list(self, ctx: RequestContext, filters: dict[str, str],
                        all_projects: bool = False) -> list[AttachmentRecord]:
        policy.authorize(ctx, "attachment:get_all")
        if all_projects:
            policy.authorize(ctx, "volume:all_projects")
        q = ATTACHMENTS.select.join(VOLUMES.table, _V["id"] == _A["volume_id"]).where(
            _A["deleted"].is_(False))
        if not all_projects:
            q = q.where(_V["project_id"] == ctx.project_id)
        for key, column in (("volume_id", "volume_id"), ("instance_id", "instance_uuid"),
                            ("status", "attach_status")):
            if key in filters:
                q = q.where(_A[column] == filters[key])
        with self.db.begin() as c:
            return ATTACHMENTS.all(c, q.order_by(_A["created_at"]))

    def connection_info_for(self, ctx: RequestContext, att: AttachmentRecord,
                            vol: VolumeRecord) -> ConnectionInfo | None:
        """connection_info of a connected attachment (re-reads the export)."""
        if att.initiator is None:
            return None
        return self.rpcapi.connection_info(ctx, vol.host or "", vol.id)


def _is_uuid(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False
