"""The volume service's host side: creates and deletes volume data and keeps
each volume's iSCSI export equal to what the database says.

The rule that makes every export operation idempotent and crash-safe:
:meth:`VolumeManager.sync_export` computes the ACL from the volume's *live
attachments that have a connector* and makes the target match it — export
with exactly those initiators, or no target at all when there are none.
Attachment update, attachment delete, terminate_connection and the
reconcile on start all call it.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import defaultdict

from sqlalchemy import bindparam, select

from tether.connection import ConnectionInfo
from tether.db import models
from tether.db.api import Database
from tether.db.prepared import Prepared
from tether.db.records import ATTACHMENTS, VOLUMES, VolumeRecord, one_of
from tether.exceptions import BackendError, InvalidVolume, VolumeNotFound
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.volume.backends.base import VolumeBackend
from tether.volume.targets.base import (
    ChapCredentials,
    ExportLocation,
    ExportSpec,
    TargetDriver,
    TargetError,
)

LOG = logging.getLogger(__name__)
_A = ATTACHMENTS.columns
# the ACL of an export: initiators of the volume's live, connected attachments
_INITIATORS = Prepared(select(_A["initiator"]).where(
    _A["volume_id"] == bindparam("volume_id"), _A["deleted"].is_(False),
    _A["initiator"].is_not(None), one_of(_A["attach_status"], att_states.LIVE_STATES)))


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


class VolumeManager:
    def __init__(self, db: Database, backend: VolumeBackend, target: TargetDriver,
                 host: str) -> None:
        self.db = db
        self.backend = backend
        self.target = target
        self.host = host
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._locks_guard = threading.Lock()

    def _lock(self, volume_id: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks[volume_id]

    # -- volume data -------------------------------------------------------

    def create_volume(self, volume_id: str) -> None:
        with self.db.begin() as c:
            vol = VOLUMES.get(c, volume_id)
        if vol is None:
            raise VolumeNotFound(volume_id)
        size = vol.size
        chap = new_chap()
        try:
            self.backend.create(volume_id, size)
        except BackendError:
            LOG.exception("creating volume %s failed", volume_id)
            self._set_status(volume_id, "create_fail")
            return
        with self.db.begin() as c:
            VOLUMES.update(c, volume_id,
                           {"status": vol_states.AVAILABLE, "chap_username": chap.username,
                            "chap_password": chap.password},
                           {"status": vol_states.MACHINE.sources("create_done")})
        LOG.info("volume %s created (%d GiB)", volume_id, size)

    def delete_volume(self, volume_id: str) -> None:
        with self._lock(volume_id):
            try:
                self.target.unexport(volume_id)
                self.backend.delete(volume_id)
            except (BackendError, TargetError):
                LOG.exception("deleting volume %s failed", volume_id)
                self._set_status(volume_id, "delete_fail")
                return
            with self.db.begin() as c:
                VOLUMES.update(c, volume_id, {"deleted": True, "deleted_at": models.utcnow(),
                                              "status": "deleted", "chap_password": None})
        LOG.info("volume %s deleted", volume_id)

    def _set_status(self, volume_id: str, event: str) -> None:
        tr = vol_states.MACHINE.transition(event)
        (target,) = tr.targets
        with self.db.begin() as c:
            VOLUMES.update(c, volume_id, {"status": target}, {"status": tr.sources})

    # -- exports -----------------------------------------------------------

    def sync_export(self, volume_id: str) -> ConnectionInfo | None:
        """Make the target hold exactly the ACL of the volume's live
        attachments; how to reach it, or None when nothing is exported."""
        with self._lock(volume_id):
            with self.db.begin() as c:
                vol = VOLUMES.get(c, volume_id)
                if vol is None or vol.deleted:
                    raise VolumeNotFound(volume_id)
                initiators = frozenset(r[0] for r in _INITIATORS.rows(c, {"volume_id": volume_id}))
            chap = self._chap(vol)
            if not initiators:
                self.target.unexport(volume_id)
                LOG.info("volume %s: no live connection, export removed", volume_id)
                return None
            spec = ExportSpec(volume_id, self.backend.path(volume_id), chap,
                              frozenset(i for i in initiators if i))
            location = self.target.export(spec)
            LOG.info("volume %s exported as %s to %d initiator(s)", volume_id,
                     location.target_iqn, len(spec.initiators))
            return _connection_info(volume_id, location, chap)

    def connection_info(self, volume_id: str) -> ConnectionInfo:
        """Where the volume's export is and how to log in, without touching the target."""
        with self.db.begin() as c:
            vol = VOLUMES.get(c, volume_id)
        if vol is None:
            raise VolumeNotFound(volume_id)
        chap = self._chap(vol)
        return _connection_info(volume_id, self.target.location(volume_id), chap)

    @staticmethod
    def _chap(vol: VolumeRecord) -> ChapCredentials:
        if not vol.chap_username or not vol.chap_password:
            raise InvalidVolume(f"Volume {vol.id} has no CHAP credentials (status "
                                f"{vol.status}); it cannot be exported.")
        return ChapCredentials(vol.chap_username, vol.chap_password)

    # -- start-up ----------------------------------------------------------

    def reconcile(self) -> dict[str, int]:
        """Make the target match the database after a restart of tgtd or of
        this service: re-create lost exports, drop exports nobody owns."""
        held = self.target.exports()
        with self.db.session() as s:
            mine = set(s.scalars(select(models.Volume.id).where(
                models.Volume.host == self.host, models.Volume.deleted.is_(False))).all())
            known = set(s.scalars(select(models.Volume.id).where(
                models.Volume.id.in_(list(held)), models.Volume.deleted.is_(False))).all())
        restored = removed = 0
        for volume_id in sorted(mine):
            try:
                if self.sync_export(volume_id) is not None:
                    restored += volume_id not in held
            except (InvalidVolume, TargetError):
                LOG.exception("reconcile: volume %s could not be re-exported", volume_id)
        # an export whose volume is gone (deleted, or never ours) is a leak
        for volume_id in sorted(set(held) - mine - known):
            self.target.unexport(volume_id)
            removed += 1
        LOG.info("reconcile: %d export(s) re-created, %d stray export(s) removed",
                 restored, removed)
        return {"restored": restored, "removed": removed}
