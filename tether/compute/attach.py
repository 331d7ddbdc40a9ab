"""The host side of a volume attach, the mirror of detach:

  a1.1    attachment update with this host's connector → connection_info
          (storage exports the volume to this initiator only)
  a2      host connect (iscsi-direct: the CHAP secret into libvirt)
  a1.1.1  guest device add (persistent, and live when running)
  a1.3    attachment complete → volume in-use

Any failure rolls everything back in reverse: no disk, no secret, no export,
volume available, no block device mapping; the action records the error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable

from sqlalchemy import bindparam

from tether.compute.detach import Notify
from tether.compute.volume_client import VolumeClient
from tether.connection import ConnectionInfo
from tether.connectors.base import VolumeConnector
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database
from tether.db.prepared import Prepared
from tether.db.records import BDMS, by
from tether.operations import ActionRef, Operations
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)
_BDM_BY_UUID = Prepared(by(BDMS, BDMS.columns["uuid"] == bindparam("uuid")))


class AttachFlow:
    def __init__(self, db: Database, virt_driver: virt.VirtDriver, connector: VolumeConnector,
                 volumes: VolumeClient, ops: Operations, notify: Notify,
                 rollback_timeout: float = 10.0) -> None:
        self.notify = notify
        self.db = db
        self.virt = virt_driver
        self.connector = connector
        self.volumes = volumes
        self.ops = ops
        self.rollback_timeout = rollback_timeout

    def run(self, ctx: RequestContext, instance_uuid: str, bdm_uuid: str,
            action: ActionRef) -> bool:
        with self.ops.batched():
            return self._run(ctx, instance_uuid, bdm_uuid, action)

    def _run(self, ctx: RequestContext, instance_uuid: str, bdm_uuid: str,
             action: ActionRef) -> bool:
        with self.db.begin() as c:
            bdm = BDMS.first(c, _BDM_BY_UUID, {"uuid": bdm_uuid})
        if bdm is None or bdm.deleted or bdm.volume_id is None or bdm.attachment_id is None:
            LOG.warning("attach: block device mapping %s is gone", bdm_uuid)
            self.ops.finish_action(action, "Error")
            return False
        volume_id, attachment_id = bdm.volume_id, bdm.attachment_id
        payload = {"volume_id": volume_id, "server_id": instance_uuid,
                   "attachment_id": attachment_id, "request_id": action.request_id}
        self.notify(ctx, "volume.attach.start", payload, False)
        undo: list[Callable[[], None]] = []
        try:
            with self.ops.step(action, "a1.1:attachment_update"):
                info = self.volumes.attachment_update(attachment_id, dataclasses.replace(
                    self.connector.properties(), mountpoint=bdm.device_name)).connection_info
                assert info is not None
            with self.ops.step(action, "a2:host_connect"):
                source = self.connector.connect(info)
                undo.append(lambda: self.connector.disconnect(info))
            spec = virt.DiskSpec(volume_id=volume_id, target_dev=_dev(bdm.device_name),
                                 bus="virtio" if bdm.disk_bus == "virtio" else "scsi",
                                 source=source)
            with self.ops.step(action, "a1.1.1:guest_device_add"):
                self.virt.attach_disk(instance_uuid, spec)
                undo.append(lambda: self._undo_disk(instance_uuid, volume_id))
            with self.ops.step(action, "a1.3:attachment_complete"):
                self.volumes.attachment_complete(attachment_id)
        except Exception:
            LOG.exception("attach of volume %s to instance %s failed; rolling back",
                          volume_id, instance_uuid)
            self._roll_back(undo, attachment_id, bdm.id)
            self.ops.finish_action(action, "Error")
            self.notify(ctx, "volume.attach.error", payload, True)
            return False
        kept = _without_secret(info)
        self.ops.finish_action(
            action, last=lambda c: BDMS.update(c, bdm.id, {"connection_info": kept}))
        self.notify(ctx, "volume.attach.end", payload, False)
        LOG.info("volume %s attached to instance %s as %s", volume_id, instance_uuid,
                 bdm.device_name)
        return True

    def _undo_disk(self, instance_uuid: str, volume_id: str) -> None:
        with contextlib.suppress(virt.DiskNotFound, virt.InstanceNotFound):
            self.virt.detach_disk(instance_uuid, volume_id, timeout=self.rollback_timeout,
                                  attempts=1)

    def _roll_back(self, undo: list[Callable[[], None]], attachment_id: str,
                   bdm_id: int) -> None:
        for step in reversed(undo):
            try:
                step()
            except Exception:
                LOG.exception("attach rollback step failed")
        try:
            self.volumes.attachment_delete(attachment_id)  # unexport; volume available
        except Exception:
            LOG.exception("attach rollback: deleting attachment %s failed", attachment_id)
        with self.db.begin() as c:
            BDMS.update(c, bdm_id, {"deleted": True, "deleted_at": models.utcnow()})


def _dev(device_name: str | None) -> str:
    return (device_name or "/dev/sdb").rsplit("/", 1)[-1]


def _without_secret(info: ConnectionInfo) -> dict[str, object]:
    """What the BDM keeps: enough to disconnect, never the CHAP password."""
    return info.to_dict(with_secret=False)
