"""The host side of a volume attach, the mirror of detach:

  a1.1    attachment update with this host's connector → connection_info
          (storage exports the volume to this initiator only); the
          connection_info and the connector are written to the mapping at
          once, before the host connects
  a2      host connect (iscsi-direct: the CHAP secret into libvirt)
  a1.1.1  guest device add (persistent, and live when running)
  a1.3    attachment complete → volume in-use

Any failure rolls everything back: no disk, no host connection, no export,
volume available, no block device mapping; the action records the error.
The rollback is an undo list made from what the database says was done (the
steps the action recorded as started, the connection_info on the mapping), so
an attach a crash interrupted is undone by the same code
(``tether.compute.recovery``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from tether.compute.connections import HostConnections
from tether.compute.operations import ActionRef, Operations
from tether.compute.repository import ComputeRepository, Notice
from tether.compute.volume_client import VolumeClient
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.records import BdmRecord
from tether.exceptions import TetherError
from tether.states import operation as op_states
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)

A11, A2, A111, A13 = ("a1.1:attachment_update", "a2:host_connect", "a1.1.1:guest_device_add",
                      "a1.3:attachment_complete")


class RollbackIncomplete(TetherError):
    """Part of a rollback could not be done; the operation stays open for the
    sweeper to try again."""


class AttachFlow:
    def __init__(self, repo: ComputeRepository, virt_driver: virt.VirtDriver,
                 connections: HostConnections, volumes: VolumeClient, ops: Operations,
                 rollback_timeout: float = 10.0) -> None:
        self.repo = repo
        self.virt = virt_driver
        self.connections = connections
        self.volumes = volumes
        self.ops = ops
        self.rollback_timeout = rollback_timeout

    def run(self, ctx: RequestContext, action: ActionRef, bdm: BdmRecord | None) -> bool:
        with self.ops.batched():
            if bdm is None or bdm.deleted or bdm.volume_id is None or not bdm.attachment_id:
                LOG.warning("attach for %s: the block device mapping is gone (rolled back)",
                            action.instance_uuid)
                self.ops.finish_action(action, "Error")
                return False
            try:
                with self.connections.guarded(bdm.shared_target):
                    return self._run(ctx, action, bdm)
            except RollbackIncomplete as exc:
                LOG.warning("%s; the sweeper will try again", exc)
                return False

    def _run(self, ctx: RequestContext, action: ActionRef, bdm: BdmRecord) -> bool:
        assert bdm.volume_id is not None and bdm.attachment_id is not None
        instance_uuid, volume_id, attachment_id = (action.instance_uuid, bdm.volume_id,
                                                   bdm.attachment_id)
        try:
            with self.ops.step(action, A11):
                connector = self.connections.properties(bdm.device_name)
                info = self.volumes.attachment_update(attachment_id, connector).connection_info
                assert info is not None
            kept = {"connection_info": info.to_dict(with_secret=False),
                    "connector": connector.to_dict()}

            def record(c: Tx) -> None:
                nonlocal bdm
                bdm = self.repo.set_bdm(c, bdm, kept)

            with self.ops.step(action, A2, first=record):
                source = self.connections.connect(bdm, info)
            spec = virt.DiskSpec(volume_id=volume_id, target_dev=_dev(bdm.device_name),
                                 bus="virtio" if bdm.disk_bus == "virtio" else "scsi",
                                 source=source)
            with self.ops.step(action, A111):
                self.virt.attach_disk(instance_uuid, spec)
            with self.ops.step(action, A13):
                self.volumes.attachment_complete(attachment_id)
        except Exception:
            LOG.exception("attach of volume %s to instance %s failed; rolling back",
                          volume_id, instance_uuid)
            self.roll_back(ctx, action, bdm)
            return False
        self.ops.finish_action(action, notice=Notice(ctx, "volume.attach.end",
                                                     _payload(action, bdm)))
        LOG.info("volume %s attached to instance %s as %s", volume_id, instance_uuid,
                 bdm.device_name)
        return True

    def roll_back(self, ctx: RequestContext, action: ActionRef, bdm: BdmRecord,
                  why: str | None = None) -> None:
        """Undo every step the action recorded as started, newest first, then
        storage's reservation and the mapping; the action ends in Error.  If
        an undo fails the ones after it are not tried and the action stays
        open: the sweeper tries again."""
        with self.repo.begin() as c:
            started = {e.event for e in self.repo.events(c, action.id)}
            now = self.repo.bdm(c, bdm.uuid)
        bdm = now or bdm
        undo: list[Callable[[], None]] = []
        if A111 in started and not bdm.deleted:
            undo.append(lambda: self._undo_disk(action.instance_uuid, bdm))
        if not bdm.deleted:
            undo.append(lambda: self._undo_connection(bdm))
        undo.append(lambda: self._undo_reservation(action.instance_uuid, bdm))
        failed = []
        for step in undo:  # each needs the one before (no unexport under a live disk)
            try:
                step()
            except Exception as exc:
                LOG.exception("attach rollback of volume %s: a step failed", bdm.volume_id)
                failed.append(str(exc))
                break
        if why is not None:
            self.ops.record(action, "rollback", op_states.ERROR, why)
        if failed:
            self.ops.record(action, "rollback", op_states.ERROR,
                            "incomplete, retried later: " + "; ".join(failed))
            raise RollbackIncomplete(f"rollback of the attach of volume {bdm.volume_id} "
                                     f"to {action.instance_uuid} is incomplete")
        self.ops.finish_action(
            action, "Error", last=lambda c: None if bdm.deleted else self.repo.release_bdm(
                c, bdm),
            notice=Notice(ctx, "volume.attach.error", _payload(action, bdm), error=True))

    def _undo_disk(self, instance_uuid: str, bdm: BdmRecord) -> None:
        assert bdm.volume_id is not None
        with contextlib.suppress(virt.DiskNotFound, virt.InstanceNotFound):
            self.virt.detach_disk(instance_uuid, bdm.volume_id, timeout=self.rollback_timeout,
                                  attempts=1)

    def _undo_connection(self, bdm: BdmRecord) -> None:
        self.connections.disconnect(bdm)

    def _undo_reservation(self, instance_uuid: str, bdm: BdmRecord) -> None:
        release_reservation(self.repo, self.volumes, instance_uuid, bdm)


def release_reservation(repo: ComputeRepository, volumes: VolumeClient, server_id: str,
                        bdm: BdmRecord) -> None:
    """Storage's side of a mapping: its attachment (unexport; the volume
    available), or, when the API died before it wrote the attachment id
    down, the server's attachments of the volume no live mapping records."""
    if bdm.attachment_id:
        volumes.attachment_delete(bdm.attachment_id)
    elif bdm.volume_id is not None:
        release_unrecorded(repo, volumes, server_id, bdm.volume_id)


def release_unrecorded(repo: ComputeRepository, volumes: VolumeClient, server_id: str,
                       volume_id: str) -> None:
    """Delete the server's attachments of the volume that no live mapping of
    the server records: what a reservation whose request died left."""
    with repo.begin() as c:
        kept = {b.attachment_id for b in repo.live_bdms(c, server_id)}
    for attachment_id in volumes.attachments_of(volume_id, server_id):
        if attachment_id not in kept:
            LOG.warning("deleting attachment %s of volume %s for server %s: no mapping "
                        "records it", attachment_id, volume_id, server_id)
            volumes.attachment_delete(attachment_id)


def _payload(action: ActionRef, bdm: BdmRecord) -> dict[str, object]:
    return {"volume_id": bdm.volume_id, "server_id": action.instance_uuid,
            "attachment_id": bdm.attachment_id, "request_id": action.request_id}


def _dev(device_name: str | None) -> str:
    return (device_name or "/dev/sdb").rsplit("/", 1)[-1]
