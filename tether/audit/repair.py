"""``tether audit --repair``: the fixes that are safe to make from outside the
services, each through a path that is idempotent and safe to run while
``tether serve`` runs:

* volume exports: :meth:`VolumeManager.sync_export` (the export becomes what
  the database says; the same call the service makes) and ``unexport`` of a
  target whose volume is gone;
* a volume status that contradicts its attachments: :meth:`VolumeManager.settle`
  (a conditional update: it does nothing if the volume changed meanwhile);
* an orphan attachment: marked detached through the volume repository (the
  attachment table's ``delete`` transition, conditional on it still being
  live), then ``sync_export`` and ``settle``.  Not through ``VolumeAPI``:
  that sends ``sync_export`` over RPC to the volume service, and the audit
  is a process of its own with no RPC (the embedded mode's transport is
  in-process); the audit runs on the volume's host and makes the same call
  with its own target driver.  Unlike the API it does not undo the
  attachment's deletion if tgtd refuses: the database is right, the next
  audit (or the service's reconcile) finds the export to fix;
* a stray domain (destroy + undefine), a stray libvirt secret (undefine), a
  stray tgtd CHAP account (delete).

Everything else is left, with what to do.  Before any repair the runner
audits again and repairs only what both audits found, so a finding that an
operation started to explain meanwhile is not acted on.
"""

from __future__ import annotations

from collections.abc import Callable

from tether.audit.findings import Finding
from tether.db.api import Database
from tether.states import attachment as att_states
from tether.virt.driver import VirtDriver
from tether.volume.backends.base import VolumeBackend
from tether.volume.manager import VolumeManager
from tether.volume.repository import VolumeRepository
from tether.volume.secret_box import SecretBox
from tether.volume.targets.base import TargetDriver


class Repairer:
    def __init__(self, db: Database, backend_host: str, virt: VirtDriver | None,
                 target: TargetDriver | None, backend: Callable[[], VolumeBackend],
                 stale_after: float, box: Callable[[], SecretBox]) -> None:
        """``backend``: made on the first volume repair (the file backend
        creates its directory); ``box``: the keys of the CHAP secrets, read
        on the first export repair."""
        self.repo = VolumeRepository(db)
        self.backend_host = backend_host
        self.virt = virt
        self.target = target
        self._backend = backend
        self._box = box
        self._stale_after = stale_after
        self._manager: VolumeManager | None = None
        self._synced: set[str] = set()
        self._fixes: dict[str, Callable[..., str]] = {
            "volume-status": self._settle, "orphan-attachment": self._orphan,
            "stray-domain": self._destroy, "stray-secret": self._undefine,
            "missing-export": self._sync, "export-acl": self._sync, "export-lun": self._sync,
            "export-account": self._sync, "stray-export": self._unexport,
            "stray-account": self._remove_account}

    def repair(self, finding: Finding) -> str:
        """Do the finding's fix; what was done.  Raises what the fix raises."""
        return self._fixes[finding.kind](*finding.target)

    def _target(self) -> TargetDriver:
        if self.target is None:
            raise RuntimeError("no target driver: this host's volumes are not audited")
        return self.target

    def manager(self) -> VolumeManager:
        if self._manager is None:
            self._manager = VolumeManager(self.repo, self._backend(), self._target(),
                                          self.backend_host, self._box(),
                                          stale_after=self._stale_after)
        return self._manager

    def _virt(self) -> VirtDriver:
        if self.virt is None:
            raise RuntimeError("no virt driver: this host's servers are not audited")
        return self.virt

    # -- storage -----------------------------------------------------------------------

    def _sync(self, volume_id: str) -> str:
        if volume_id in self._synced:
            return "re-exported already (see above)"
        info = self.manager().sync_export(volume_id)
        self._synced.add(volume_id)
        return "exported as the database says" if info is not None else \
            "target removed (no attachment is connected)"

    def _unexport(self, volume_id: str) -> str:
        self._target().unexport(volume_id)
        return "target removed"

    def _remove_account(self, username: str) -> str:
        self._target().remove_account(username)
        return "account deleted"

    def _settle(self, volume_id: str) -> str:
        status = self.manager().settle(volume_id)
        return f"settled to {status}" if status else "nothing to settle any more"

    def _orphan(self, attachment_id: str, volume_id: str) -> str:
        with self.repo.begin() as c:
            att = self.repo.attachment(c, attachment_id)
            if att is None or att.deleted:
                return "already gone"
            self.repo.apply(c, att_states.MACHINE, att, "delete",
                            values=self.repo.deleted_values(), expect={"deleted": False})
        manager = self.manager()
        done = ["attachment deleted"]
        done.append("export synced" if manager.sync_export(volume_id) is not None
                    else "target removed")
        self._synced.add(volume_id)
        status = manager.settle(volume_id)
        if status is not None:
            done.append(f"volume settled to {status}")
        return ", ".join(done)

    # -- libvirt -----------------------------------------------------------------------

    def _destroy(self, server_uuid: str) -> str:
        self._virt().destroy(server_uuid)
        return "domain destroyed and undefined"

    def _undefine(self, volume_id: str) -> str:
        self._virt().undefine_chap_secret(volume_id)
        return "secret undefined"
