"""The volume service's host side: creates and deletes volume data and keeps
each volume's iSCSI export equal to what the database says.

The rule that makes every export operation idempotent and crash-safe:
:meth:`VolumeManager.sync_export` computes the ACL from the volume's *live
attachments that have a connector* and makes the target match it — export
with exactly those initiators, or no target at all when there are none.
Attachment update, attachment delete, terminate_connection and the
reconcile all call it.

Recovery (:meth:`VolumeManager.reconcile`, on start and every
``[volume] reconcile_interval``): a volume still ``creating`` or
``deleting`` is created or deleted again (both are idempotent); every export
is made to match the database; a volume whose status a crashed request left
contradicting its attachments is settled.  ``docs/recovery.md`` has the table.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import threading
from collections import defaultdict
from dataclasses import dataclass

from tether.connection import ConnectionInfo
from tether.db.api import Tx
from tether.db.models import utcnow
from tether.db.records import VolumeRecord
from tether.exceptions import BackendError, Conflict, InvalidVolume, VolumeNotFound
from tether.states import volume as vol_states
from tether.states.machine import InvalidTransition
from tether.volume.backends.base import VolumeBackend
from tether.volume.repository import VolumeRepository
from tether.volume.secret_box import SecretBox
from tether.volume.targets.base import (
    ChapCredentials,
    ExportLocation,
    ExportSpec,
    TargetDriver,
    TargetError,
)

LOG = logging.getLogger(__name__)


def _connection_info(volume_id: str, location: ExportLocation,
                     chap: ChapCredentials) -> ConnectionInfo:
    return ConnectionInfo(volume_id=volume_id, target_iqn=location.target_iqn,
                          target_portal=location.target_portal,
                          target_lun=location.target_lun,
                          auth_username=chap.username, auth_password=chap.password)


def new_chap() -> ChapCredentials:
    """One-way CHAP: 20-char user, 16-char secret (tgt's and Cinder's sizes)."""
    return ChapCredentials(username="tether" + secrets.token_hex(7),
                           password=secrets.token_urlsafe(12)[:16])


@dataclass(frozen=True)
class Reconciled:
    restored: int  # exports re-created
    removed: int  # stray exports removed
    created: int  # volumes left creating, created now
    deleted: int  # volumes left deleting, deleted now
    settled: int  # statuses a crash left behind, settled

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class VolumeManager:
    def __init__(self, repo: VolumeRepository, backend: VolumeBackend, target: TargetDriver,
                 host: str, box: SecretBox, stale_after: float = 600.0) -> None:
        """``box`` seals the CHAP secrets the database keeps and opens them
        for the target and connection_info; ``stale_after``: seconds after
        which a transitional status nothing has changed is a crash's
        leftover (the periodic reconcile's rule)."""
        self.repo = repo
        self.box = box
        self.backend = backend
        self.target = target
        self.host = host
        self.stale_after = stale_after
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    def _lock(self, volume_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[volume_id]

    def _get(self, volume_id: str) -> VolumeRecord | None:
        with self.repo.begin() as c:
            return self.repo.volume(c, volume_id)

    # -- volume data -------------------------------------------------------

    def create_volume(self, volume_id: str) -> None:
        """Create the data of a ``creating`` volume, then make it available
        with its CHAP credentials; a volume no longer creating (created by a
        recovery already) is left alone."""
        with self._lock(volume_id):
            vol = self._get(volume_id)
            if vol is None:
                raise VolumeNotFound(volume_id)
            if vol.status != vol_states.CREATING:
                LOG.info("volume %s is %s: nothing to create", volume_id, vol.status)
                return
            try:
                self.backend.create(volume_id, vol.size)
            except BackendError:
                LOG.exception("creating volume %s failed", volume_id)
                self._apply(vol, "create_fail")
                return
            chap = new_chap()
            self._apply(vol, "create_done", chap_username=chap.username,
                        chap_password=self.box.seal(chap.password))
        LOG.info("volume %s created (%d GiB)", volume_id, vol.size)

    def delete_volume(self, volume_id: str) -> None:
        """Remove the export and the data of a ``deleting`` volume."""
        with self._lock(volume_id):
            vol = self._get(volume_id)
            if vol is None or vol.status != vol_states.DELETING:
                LOG.info("volume %s is %s: nothing to delete", volume_id,
                         vol.status if vol else "gone")
                return
            try:
                self.target.unexport(volume_id)
                self.backend.delete(volume_id)
            except (BackendError, TargetError):
                LOG.exception("deleting volume %s failed", volume_id)
                self._apply(vol, "delete_fail")
                return
            self._apply(vol, "delete_done", deleted=True, deleted_at=utcnow(),
                        chap_password=None)
        LOG.info("volume %s deleted", volume_id)

    def _apply(self, vol: VolumeRecord, event: str, **values: object) -> None:
        with self.repo.begin() as c:
            self.repo.apply(c, vol_states.MACHINE, vol, event, values=values)

    # -- exports -----------------------------------------------------------

    def sync_export(self, volume_id: str) -> ConnectionInfo | None:
        """Make the target hold exactly the ACL of the volume's live
        attachments; how to reach it, or None when nothing is exported."""
        with self._lock(volume_id):
            with self.repo.begin() as c:
                found = self.repo.volume_and_initiators(c, volume_id)
            if found is None or found[0].deleted:
                raise VolumeNotFound(volume_id)
            vol, initiators = found
            if not initiators:
                self.target.unexport(volume_id)
                LOG.info("volume %s: no live connection, export removed", volume_id)
                return None
            chap = self._chap(vol)
            spec = ExportSpec(volume_id, self.backend.path(volume_id), chap, initiators)
            location = self.target.export(spec)
            LOG.info("volume %s exported as %s to %d initiator(s)", volume_id,
                     location.target_iqn, len(spec.initiators))
            return _connection_info(volume_id, location, chap)

    def connection_info(self, volume_id: str) -> ConnectionInfo:
        """Where the volume's export is and how to log in, without touching the target."""
        vol = self._get(volume_id)
        if vol is None:
            raise VolumeNotFound(volume_id)
        return _connection_info(volume_id, self.target.location(volume_id), self._chap(vol))

    def _chap(self, vol: VolumeRecord) -> ChapCredentials:
        """The volume's CHAP credentials, its secret opened (the database
        keeps it sealed: tether.volume.secret_box)."""
        if not vol.chap_username or not vol.chap_password:
            raise InvalidVolume(f"Volume {vol.id} has no CHAP credentials (status "
                                f"{vol.status}); it cannot be exported.")
        return ChapCredentials(vol.chap_username, self.box.open(vol.chap_password, vol.id))

    # -- recovery ----------------------------------------------------------

    def reconcile(self, at_start: bool = False) -> Reconciled:
        """Make this backend equal to the database after a restart of tgtd or
        of this service, and finish what a crash left half-done.  At start
        every volume left ``creating`` or ``deleting`` is finished (no request
        of this service can be running); later only those older than
        ``stale_after`` (a lost message)."""
        cutoff = utcnow() - dt.timedelta(seconds=0 if at_start else self.stale_after)
        with self.repo.begin() as c:
            left = [v for v in self.repo.volumes_of_host(
                c, self.host, (vol_states.CREATING, vol_states.DELETING))
                if at_start or (v.updated_at or v.created_at) < cutoff]
        created = deleted = 0
        for vol in left:
            LOG.warning("volume %s was left %s: finishing it", vol.id, vol.status)
            if vol.status == vol_states.CREATING:
                self.create_volume(vol.id)
                created += 1
            else:
                self.delete_volume(vol.id)
                deleted += 1
        restored, removed = self._reconcile_exports()
        settled = self._settle_leftovers(utcnow() - dt.timedelta(seconds=self.stale_after))
        result = Reconciled(restored, removed, created, deleted, settled)
        LOG.info("reconcile: %s", result.as_dict())
        return result

    def _reconcile_exports(self) -> tuple[int, int]:
        """Compare what tgtd holds with what the database wants, in one read
        of each, and sync only the exports that differ (cheap enough to run
        every few seconds: a tgtd restart loses every export, and the guests'
        sessions with them, until this runs)."""
        held = self.target.exports()
        with self.repo.begin() as c:
            wanted = {vid: want for vid, want in self.repo.host_exports(c, self.host).items()
                      if want[0] not in (vol_states.CREATING, vol_states.DELETING)}
            known = self.repo.live_volume_ids(c, set(held) - set(wanted))
        restored = removed = 0
        for volume_id, (_status, chap, initiators) in sorted(wanted.items()):
            have = held.get(volume_id)
            if not initiators and have is None:
                continue
            if have is not None and initiators and (
                    have.initiators, have.chap_username, have.backing_path) == (
                    initiators, chap, self.backend.path(volume_id)):
                continue
            try:
                self.sync_export(volume_id)
                restored += have is None
            except (InvalidVolume, TargetError, VolumeNotFound):
                LOG.exception("reconcile: volume %s could not be re-exported", volume_id)
        # an export whose volume is gone (deleted, or never ours) is a leak
        for volume_id in sorted(set(held) - set(wanted) - known):
            self.target.unexport(volume_id)
            removed += 1
        return restored, removed

    def _settle_leftovers(self, cutoff: dt.datetime) -> int:
        """A volume whose status contradicts its attachments and that nothing
        changed since ``cutoff``: what a request that died between its two
        writes left (an attachment deleted, the status not yet settled).  A
        volume ``detaching`` with its attachment still there is the compute
        side's (its detach is resumed or rolled back there)."""
        settled = 0
        with self.repo.begin() as c:
            vols = [v for v in self.repo.volumes_of_host(
                c, self.host, vol_states.MACHINE.sources("settle")["status"])
                if (v.updated_at or v.created_at) < cutoff]
            for vol in vols:
                settled += self._settle(c, vol) is not None
        return settled

    def settle(self, volume_id: str) -> str | None:
        """Settle one volume whose status contradicts its attachments, now
        (``tether audit --repair``, once it has seen that no operation
        touches the volume): the status it got, or None when there was
        nothing to settle or the volume changed meanwhile."""
        with self.repo.begin() as c:
            vol = self.repo.volume(c, volume_id)
            if vol is None or vol.deleted:
                return None
            return self._settle(c, vol)

    def _settle(self, c: Tx, vol: VolumeRecord) -> str | None:
        if vol.status not in vol_states.MACHINE.sources("settle")["status"]:
            return None
        remaining = self.repo.live_attachments(c, vol.id)
        target = vol_states.settled_status(a.attach_status for a in remaining)
        if target == vol.status or (vol.status == vol_states.DETACHING and remaining):
            return None
        try:
            self.repo.apply(c, vol_states.MACHINE, vol, "settle", to={"status": target},
                            expect={"updated_at": vol.updated_at})
        except (InvalidTransition, Conflict):
            return None  # it moved: someone is working on it
        LOG.warning("volume %s was left %s; settled to %s", vol.id, vol.status, target)
        return target
