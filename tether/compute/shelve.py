"""Shelving: a shelved server is stopped; a shelved-offloaded one has no guest
and no host at all.  Its volumes stay attached in the storage sense (each
keeps an attachment, reserved, without a connector, so nothing is exported
anywhere), and come back to whichever host unshelves the server.

Both directions are idempotent, so an offload or an unshelve a crash
interrupted is run again: offload swaps a volume's attachment only while its
mapping still has a connection, and then deletes the server's attachments of
the volume that the mapping does not record (the old one, or a fresh one
created just before a crash); unshelve leaves a volume whose attachment is
already complete alone.
"""

from __future__ import annotations

import logging

from tether.compute.attach import release_unrecorded
from tether.compute.connections import HostConnections
from tether.compute.operations import ActionRef, Operations
from tether.compute.repository import ComputeRepository
from tether.compute.volume_client import VolumeClient
from tether.db.records import BdmRecord
from tether.states import attachment as att_states
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)


class ShelveFlow:
    def __init__(self, repo: ComputeRepository, virt_driver: virt.VirtDriver,
                 connections: HostConnections, volumes: VolumeClient,
                 ops: Operations) -> None:
        self.repo = repo
        self.virt = virt_driver
        self.connections = connections
        self.volumes = volumes
        self.ops = ops

    def volume_bdms(self, instance_uuid: str) -> list[BdmRecord]:
        with self.repo.begin() as c:
            return [b for b in self.repo.live_bdms(c, instance_uuid) if b.volume_id]

    def offload(self, action: ActionRef) -> None:
        """Guest gone, host connections gone, exports gone; each volume keeps a
        fresh connector-less attachment for this server."""
        server = action.instance_uuid
        with self.ops.step(action, "destroy_guest"):
            self.virt.destroy(server)
        for bdm in self.volume_bdms(server):
            assert bdm.volume_id is not None
            with self.ops.step(action, f"release_volume:{bdm.volume_id}"), \
                    self.connections.guarded(bdm.shared_target):
                if bdm.connection_info:
                    self.connections.disconnect(bdm)
                    fresh = self.volumes.attachment_create(bdm.volume_id, server)
                    with self.repo.begin() as c:
                        self.repo.set_bdm(c, bdm, {"attachment_id": fresh.id,
                                                   "connection_info": None,
                                                   "connector": None})
                release_unrecorded(self.repo, self.volumes, server, bdm.volume_id)

    def reconnect(self, action: ActionRef) -> None:
        """After the guest is spawned on this host: every non-root volume back in."""
        server = action.instance_uuid
        for mapping in self.volume_bdms(server):
            if (mapping.boot_index == 0 or mapping.attachment_id is None
                    or mapping.volume_id is None):
                continue
            bdm, volume_id, attachment_id = mapping, mapping.volume_id, mapping.attachment_id
            with self.ops.step(action, f"reattach_volume:{volume_id}"), \
                    self.connections.guarded(bdm.shared_target):
                if self.volumes.attachment_status(attachment_id) == att_states.ATTACHED:
                    continue  # done before a crash
                connector = self.connections.properties(bdm.device_name)
                info = self.volumes.attachment_update(attachment_id,
                                                      connector).connection_info
                assert info is not None
                with self.repo.begin() as c:
                    bdm = self.repo.set_bdm(c, bdm, {
                        "connection_info": info.to_dict(with_secret=False),
                        "connector": connector.to_dict()})
                source = self.connections.connect(bdm, info)
                self.virt.attach_disk(server, virt.DiskSpec(
                    volume_id, (bdm.device_name or "/dev/sdb").rsplit("/", 1)[-1],
                    "virtio" if bdm.disk_bus == "virtio" else "scsi", source))
                self.volumes.attachment_complete(attachment_id)
