"""The block-storage service as the REST API sees it: checks, state
transitions (each one conditional update, through the repository), and RPC
to the volume host.

Every method takes the caller's context and enforces project scoping: a
volume or attachment of another project is reported as not found.

An attachment change is two writes around the target: the database first
(so the export follows it), then ``sync_export`` on the volume's host; if
the target refuses, the database goes back.  If this process dies between
the two, the volume service's reconcile makes the target follow the
database, and settles a volume whose status no longer matches its
attachments (``VolumeManager.reconcile``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether import faults, policy
from tether.connection import ConnectionInfo, Connector
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.models import utcnow
from tether.db.records import AttachmentRecord, VolumeRecord
from tether.exceptions import (
    AttachmentNotFound,
    Conflict,
    InvalidInput,
    InvalidVolume,
    OverLimit,
    ServiceUnavailable,
    VolumeNotFound,
)
from tether.quota import Excess, OverQuota, Quotas
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.volume.repository import DEFAULT_TYPE, VolumeRepository
from tether.volume.rpcapi import VolumeRpcApi

LOG = logging.getLogger(__name__)

MAX_SIZE_GIB = 16384
# (instance_uuid, volume_id, attachment_id) -> does the server still use it?
InUseCheck = Callable[[str, str, str], bool]


@dataclass(frozen=True)
class AttachmentResult:
    attachment: AttachmentRecord
    connection_info: ConnectionInfo | None


def _never_in_use(_instance: str, _volume: str, _attachment: str) -> bool:
    return False


def _unchanged(checked: AttachmentRecord, now: AttachmentRecord) -> None:
    """The attachment is still the one the in-use check was made for (a
    connector or server arriving meanwhile would need another check)."""
    if (now.instance_uuid, now.connector is None) != (
            checked.instance_uuid, checked.connector is None):
        raise Conflict(f"Volume attachment {now.id} changed while it was being detached; "
                       "try again.")


def over_limit(excess: Excess) -> OverLimit:
    """Cinder's words (and 413) for a volume that does not fit the quotas."""
    r, used, limit = excess.resource, excess.used, excess.limit
    if r == "per_volume_gigabytes":
        return OverLimit(f"VolumeSizeExceedsLimit: Requested volume size {excess.requested}G "
                         f"is larger than maximum allowed limit {limit}G.")
    if r.startswith("gigabytes"):
        return OverLimit(f"VolumeSizeExceedsAvailableQuota: Requested volume or snapshot "
                         f"exceeds allowed {r} quota. Requested {excess.requested}G, quota "
                         f"is {limit}G and {used}G has been consumed.")
    return OverLimit(f"VolumeLimitExceeded: Maximum number of volumes allowed ({limit}) "
                     f"exceeded for quota '{r}'. Delete volumes of this project or ask an "
                     "administrator to raise its quota.")


def requested_quota(size: int) -> dict[str, int]:
    """What one new volume of ``size`` GiB takes (in Cinder's order of checks)."""
    return {"per_volume_gigabytes": size, "volumes": 1, "gigabytes": size,
            f"volumes_{DEFAULT_TYPE}": 1, f"gigabytes_{DEFAULT_TYPE}": size}


class VolumeAPI:
    def __init__(self, repo: VolumeRepository, rpcapi: VolumeRpcApi,
                 pick_host: Callable[[], tuple[str, str]], quotas: Quotas,
                 in_use: InUseCheck = _never_in_use, shared_targets: bool = False) -> None:
        self.repo = repo
        self.quotas = quotas
        self.rpcapi = rpcapi
        self.pick_host = pick_host  # -> (host, service uuid) of a live volume service
        # CVE-2023-2088: whether a server still uses a volume (the Compute API's answer)
        self.in_use = in_use
        self.shared_targets = shared_targets

    # -- lookups -----------------------------------------------------------

    def _volume(self, c: Tx, ctx: RequestContext, volume_id: str,
                rule: str = "volume:get") -> VolumeRecord:
        vol = self.repo.volume(c, volume_id) if _is_uuid(volume_id) else None
        if vol is None or vol.deleted or not policy.allowed(ctx, "volume:get", vol.project_id):
            raise VolumeNotFound(volume_id)
        policy.authorize(ctx, rule, vol.project_id)
        return vol

    def _attachment(self, c: Tx, ctx: RequestContext, attachment_id: str,
                    rule: str = "tether:volume:attachment_get"
                    ) -> tuple[AttachmentRecord, VolumeRecord]:
        both = self.repo.attachment_and_volume(c, attachment_id) if _is_uuid(
            attachment_id) else None
        if both is None or both[0].deleted or not policy.allowed(
                ctx, "tether:volume:attachment_get", both[1].project_id):
            raise AttachmentNotFound(attachment_id)
        att, vol = both
        policy.authorize(ctx, rule, vol.project_id)
        return att, vol

    def get(self, ctx: RequestContext, volume_id: str) -> VolumeRecord:
        with self.repo.begin() as c:
            return self._volume(c, ctx, volume_id)

    def get_with_attachments(self, ctx: RequestContext, volume_id: str
                             ) -> tuple[VolumeRecord, list[AttachmentRecord]]:
        """The volume and its live attachments, read in one transaction."""
        with self.repo.begin() as c:
            vol = self._volume(c, ctx, volume_id)
            return vol, self.repo.live_attachments(c, volume_id)

    def live_attachments(self, volume_ids: list[str]) -> dict[str, list[AttachmentRecord]]:
        with self.repo.begin() as c:
            return self.repo.live_attachments_of(c, volume_ids)

    def list_volumes(self, ctx: RequestContext, filters: dict[str, str],
                     all_projects: bool = False,
                     limit: int | None = None, marker: str | None = None) -> list[VolumeRecord]:
        policy.authorize(ctx, "volume:get_all")
        if all_projects:
            policy.authorize(ctx, "tether:volume:all_projects")
        else:
            filters = {k: v for k, v in filters.items() if k != "project_id"}
        with self.repo.begin() as c:
            rows = self.repo.volumes(c, None if all_projects else ctx.project_id, filters)
        rows = [r for r in rows if policy.visible(ctx, "volume:get", r.project_id)]
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
        """Recorded ``creating`` on a live backend (counted against the
        project's quotas in the same transaction), then cast to it.  If the
        cast is lost (or the backend dies), the backend finds the volume still
        ``creating`` when it starts again and creates it then."""
        policy.authorize(ctx, "volume:create")
        if not 1 <= size <= MAX_SIZE_GIB:
            raise InvalidInput(f"Invalid input received: size must be an integer between 1 "
                               f"and {MAX_SIZE_GIB} GiB, got {size}.")
        host, service_uuid = self.pick_host()
        values = {
            "id": str(uuid.uuid4()), "project_id": ctx.project_id,
            "user_id": ctx.user_id, "name": name, "description": description,
            "size": size, "multiattach": multiattach, "meta": dict(metadata),
            "host": host, "service_uuid": service_uuid,
            "shared_targets": self.shared_targets}
        try:  # counted and inserted in one transaction, the project locked
            with self.quotas.claim(ctx.project_id, requested_quota(size)) as c:
                vol = self.repo.new_volume(c, values)
                faults.point("quota:volume_inserted")
        except OverQuota as exc:
            raise over_limit(exc.excess) from None
        faults.point("quota:volume_committed")
        self.rpcapi.create_volume(ctx, host, vol.id)
        return vol

    def update(self, ctx: RequestContext, volume_id: str, changes: dict[str, Any]
               ) -> VolumeRecord:
        with self.repo.begin() as c:
            vol = self._volume(c, ctx, volume_id, "volume:update")
            values: dict[str, Any] = {
                k: changes[k] for k in ("name", "description") if k in changes}
            if "metadata" in changes:
                values["meta"] = dict(changes["metadata"])
            if not values:
                return vol
            self.repo.set_volume(c, vol, values)
            return self._volume(c, ctx, volume_id)

    def delete(self, ctx: RequestContext, volume_id: str) -> None:
        """``deleting``, then cast to the backend (which finds a volume still
        ``deleting`` when it starts, if the cast was lost)."""
        with self.repo.begin() as c:
            vol = self._volume(c, ctx, volume_id, "volume:delete")
            if any(a.connector is not None for a in self.repo.live_attachments(c, vol.id)):
                # (a volume reset to error under a guest: deleting it would pull it)
                raise InvalidVolume(f"Volume {volume_id} is {vol.status} but still has "
                                    "connected attachments: detach it first (os-force_detach "
                                    "for an attachment no server uses).")
            if vol.host is None:
                raise ServiceUnavailable(f"Volume {volume_id} has no host to delete it on.")
            self.repo.apply(c, vol_states.MACHINE, vol, "delete")
        self.rpcapi.delete_volume(ctx, vol.host, volume_id)

    def transition(self, c: Tx, vol: VolumeRecord, event: str,
                   target: str | None = None) -> VolumeRecord:
        """Apply ``event`` to the volume (a refusal names its current status)."""
        return self.repo.apply(c, vol_states.MACHINE, vol, event,
                               to=None if target is None else {"status": target})

    def settle(self, c: Tx, vol: VolumeRecord) -> str:
        """Recompute the volume's status from the attachments that remain."""
        remaining = [a.attach_status for a in self.repo.live_attachments(c, vol.id)]
        target = vol_states.settled_status(remaining)
        if vol.status == target or vol.status not in vol_states.MACHINE.sources(
                "settle")["status"]:
            return vol.status
        return self.transition(c, vol, "settle", target).status

    # -- attachments (new flow) --------------------------------------------

    def attachment_create(self, ctx: RequestContext, volume_id: str,
                          instance_uuid: str | None, connector: Connector | None,
                          mode: str = "rw") -> AttachmentResult:
        if mode not in ("rw", "ro"):
            raise InvalidInput(f"Invalid attach mode {mode!r}: expected 'rw' or 'ro'.")
        with self.repo.begin() as c:
            vol = self._volume(c, ctx, volume_id, "volume:attachment_create")
            event = "reserve_multiattach" if vol.multiattach else "reserve"
            if (not vol.multiattach and instance_uuid is not None
                    and vol.status != vol_states.AVAILABLE
                    and any(a.instance_uuid == instance_uuid
                            for a in self.repo.live_attachments(c, vol.id))):
                event = "reserve_same_server"
            self.transition(c, vol, event)
            att = self.repo.new_attachment(c, {
                "id": str(uuid.uuid4()), "volume_id": vol.id, "instance_uuid": instance_uuid,
                "attach_status": att_states.RESERVED, "attach_mode": mode})
        if connector is None:
            return AttachmentResult(att, None)
        return self.attachment_update(ctx, att.id, connector)

    def attachment_update(self, ctx: RequestContext, attachment_id: str,
                          connector: Connector) -> AttachmentResult:
        with self.repo.begin() as c:
            att, vol = self._attachment(c, ctx, attachment_id, "volume:attachment_update")
            att_states.MACHINE.check("connect", {"attach_status": att.attach_status}, att.id)
            if not (vol.status == vol_states.IN_USE and vol.multiattach):
                # (a multiattach volume already in use stays in-use)
                self.transition(c, vol, "attach_start")
            connected = self.repo.apply(c, att_states.MACHINE, att, "connect", values={
                "initiator": connector.initiator, "connector": connector.to_dict(),
                "attached_host": connector.host or None,
                "mountpoint": connector.mountpoint or att.mountpoint})
        try:
            info = self.rpcapi.sync_export(ctx, vol.host or "", vol.id)
        except Exception:
            with self.repo.begin() as c:
                self.repo.apply(c, att_states.MACHINE, connected, "connect_revert",
                                to={"attach_status": att.attach_status}, values={
                                    "initiator": att.initiator, "connector": att.connector,
                                    "attached_host": att.attached_host,
                                    "mountpoint": att.mountpoint})
                now = self.repo.volume(c, vol.id)
                if now is not None:
                    self.settle(c, now)
            raise
        if info is None:  # cannot happen: this attachment has an initiator
            raise InvalidVolume(f"Volume {vol.id} was not exported.")
        return AttachmentResult(connected, info)

    def attachment_complete(self, ctx: RequestContext, attachment_id: str) -> None:
        """Idempotent: completing an attached attachment again changes nothing."""
        with self.repo.begin() as c:
            att, vol = self._attachment(c, ctx, attachment_id, "volume:attachment_complete")
            att_states.MACHINE.check("complete", {"attach_status": att.attach_status}, att.id)
            if att.attach_status == att_states.ATTACHED:
                return
            if att.attach_status == att_states.RESERVED or att.initiator is None:
                raise InvalidInput(f"Attachment {att.id} has no connector yet: update it with "
                                   "the host's connector before completing it.")
            self.transition(c, vol, "attach_complete")
            self.repo.apply(c, att_states.MACHINE, att, "complete",
                            values={"attached_at": utcnow()})

    def attachment_delete(self, ctx: RequestContext, attachment_id: str
                          ) -> list[AttachmentRecord]:
        """Remove an attachment: its initiator leaves the ACL (the target goes
        with the last one), then the volume settles.  Returns what remains."""
        with self.repo.begin() as c:
            att, vol = self._attachment(c, ctx, attachment_id, "volume:attachment_delete")
            ask = self._may_be_in_use(ctx, att)
            if not ask:  # nothing to ask compute: one transaction
                removed = self._mark_detached(c, [att])
        if ask:
            self.check_not_in_use(ctx, [att])
            with self.repo.begin() as c:
                now, vol = self._attachment(c, ctx, attachment_id, "volume:attachment_delete")
                _unchanged(att, now)
                removed = self._mark_detached(c, [now])
        return self._sync_and_settle(ctx, vol, removed)

    @staticmethod
    def _may_be_in_use(ctx: RequestContext, att: AttachmentRecord) -> bool:
        """Whether detaching ``att`` for ``ctx`` needs compute's word: a server's
        connected attachment, and a caller who is not one of Tether's services
        (as Cinder: only a request with the service role may pull one)."""
        return not (ctx.is_service or att.instance_uuid is None or att.connector is None)

    def check_not_in_use(self, ctx: RequestContext, atts: list[AttachmentRecord]) -> None:
        """CVE-2023-2088: refuse (409) a storage-side detach of an attachment a
        server still uses (the server exists, is not being deleted and compute
        records the volume attached to it), unless Tether's services ask.
        Every path that drops an attachment or its export comes here first:
        attachment delete, os-detach, os-terminate_connection, os-force_detach
        and os-reset_status.  It asks compute: call it outside a transaction."""
        for att in atts:
            if not self._may_be_in_use(ctx, att):
                continue
            assert att.instance_uuid is not None
            if self.in_use(att.instance_uuid, att.volume_id, att.id):
                LOG.warning("refused %s's storage-side detach of attachment %s: server %s "
                            "still uses volume %s", ctx.user_id, att.id, att.instance_uuid,
                            att.volume_id)
                raise Conflict(
                    f"Volume attachment {att.id} is in use by server {att.instance_uuid}; "
                    f"detach the volume through the compute API (DELETE /servers/"
                    f"{att.instance_uuid}/os-volume_attachments/{att.volume_id}).")

    def remove_attachments(self, ctx: RequestContext, volume_id: str,
                           checked: list[AttachmentRecord]) -> list[AttachmentRecord]:
        """Mark attachments detached, make the export match, settle the volume.
        ``checked``: as :meth:`check_not_in_use` saw them (refused if one has
        changed since).  If the target cannot be updated, they are restored."""
        with self.repo.begin() as c:
            vol = self.repo.volume(c, volume_id)
            if vol is None:
                raise VolumeNotFound(volume_id)
            rows = []
            for att in checked:
                now = self.repo.attachment(c, att.id)
                if now is not None and not now.deleted:
                    _unchanged(att, now)
                    rows.append(now)
            removed = self._mark_detached(c, rows)
        return self._sync_and_settle(ctx, vol, removed)

    def _mark_detached(self, c: Tx, atts: list[AttachmentRecord]
                       ) -> list[tuple[AttachmentRecord, str]]:
        """Soft-delete the attachments; each as now, with the status it had."""
        gone = self.repo.deleted_values()
        return [(self.repo.apply(c, att_states.MACHINE, att, "delete", values=gone,
                                 expect={"deleted": False}), att.attach_status)
                for att in atts]

    def _sync_and_settle(self, ctx: RequestContext, vol: VolumeRecord,
                         removed: list[tuple[AttachmentRecord, str]]
                         ) -> list[AttachmentRecord]:
        """Export to match the (already marked) attachments, then settle the
        volume; if the target refuses, the attachments come back."""
        try:
            self.rpcapi.sync_export(ctx, vol.host or "", vol.id)
        except Exception:
            with self.repo.begin() as c:
                for att, status in removed:
                    self.repo.apply(c, att_states.MACHINE, att, "undelete",
                                    to={"attach_status": status}, values={
                                        "deleted": False, "deleted_at": None,
                                        "detached_at": None})
            raise
        with self.repo.begin() as c:
            now = self.repo.volume(c, vol.id)
            assert now is not None
            self.settle(c, now)
            return self.repo.live_attachments(c, vol.id)

    def attachment_get(self, ctx: RequestContext, attachment_id: str
                       ) -> tuple[AttachmentRecord, VolumeRecord]:
        with self.repo.begin() as c:
            return self._attachment(c, ctx, attachment_id)

    def attachment_list(self, ctx: RequestContext, filters: dict[str, str],
                        all_projects: bool = False) -> list[AttachmentRecord]:
        policy.authorize(ctx, "tether:volume:attachment_get_all")
        if all_projects:
            policy.authorize(ctx, "tether:volume:all_projects")
        with self.repo.begin() as c:
            return self.repo.attachments(c, None if all_projects else ctx.project_id, filters)

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
