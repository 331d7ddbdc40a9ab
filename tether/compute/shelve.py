"""Shelving: a shelved server is stopped; a shelved-offloaded one has no guest
and no host at all.  Its volumes stay attached in the storage sense (each
keeps an attachment, reserved, without a connector, so nothing is exported
anywhere), and come back to whichever host unshelves the server.
"""

from __future__ import annotations

import dataclasses
import logging

from sqlalchemy import select

from tether.compute.volume_client import VolumeClient
from tether.connection import ConnectionInfo
from tether.connectors.base import VolumeConnector
from tether.db import models
from tether.db.api import Database
from tether.operations import ActionRef, Operations
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)


class ShelveFlow:
    def __init__(self, db: Database, virt_driver: virt.VirtDriver, connector: VolumeConnector,
                 volumes: VolumeClient, ops: Operations) -> None:
        self.db = db
        self.virt = virt_driver
        self.connector = connector
        self.volumes = volumes
        self.ops = ops

    def volume_bdms(self, instance_uuid: str) -> list[models.BlockDeviceMapping]:
        with self.db.session() as s:
            rows = list(s.scalars(select(models.BlockDeviceMapping).where(
                models.BlockDeviceMapping.instance_uuid == instance_uuid,
                models.BlockDeviceMapping.volume_id.is_not(None),
                models.BlockDeviceMapping.deleted.is_(False)).order_by(
                models.BlockDeviceMapping.id)).all())
            for r in rows:
                s.expunge(r)
            return rows

    def offload(self, instance_uuid: str, action: ActionRef) -> None:
        """Guest gone, host connections gone, exports gone; each volume keeps a
        fresh connector-less attachment for this server."""
        with self.ops.step(action, "destroy_guest"):
            self.virt.destroy(instance_uuid)
        for bdm in self.volume_bdms(instance_uuid):
            assert bdm.volume_id is not None
            with self.ops.step(action, f"release_volume:{bdm.volume_id}"):
                if bdm.connection_info:
                    self.connector.disconnect(ConnectionInfo.from_dict(bdm.connection_info))
                fresh = self.volumes.attachment_create(bdm.volume_id, instance_uuid)
                if bdm.attachment_id:
                    self.volumes.attachment_delete(bdm.attachment_id)
                with self.db.session() as s:
                    row = s.get(models.BlockDeviceMapping, bdm.id)
                    if row is not None:
                        row.attachment_id, row.connection_info = fresh.id, None

    def reconnect(self, instance_uuid: str, action: ActionRef) -> None:
        """After the guest is spawned on this host: every non-root volume back in."""
        for bdm in self.volume_bdms(instance_uuid):
            if bdm.boot_index == 0 or bdm.attachment_id is None or bdm.volume_id is None:
                continue
            with self.ops.step(action, f"reattach_volume:{bdm.volume_id}"):
                info = self.volumes.attachment_update(bdm.attachment_id, dataclasses.replace(
                    self.connector.properties(), mountpoint=bdm.device_name)).connection_info
                assert info is not None
                source = self.connector.connect(info)
                self.virt.attach_disk(instance_uuid, virt.DiskSpec(
                    bdm.volume_id, (bdm.device_name or "/dev/sdb").rsplit("/", 1)[-1],
                    "virtio" if bdm.disk_bus == "virtio" else "scsi", source))
                self.volumes.attachment_complete(bdm.attachment_id)
                with self.db.session() as s:
                    row = s.get(models.BlockDeviceMapping, bdm.id)
                    if row is not None:
                        row.connection_info = info.to_dict(with_secret=False)
