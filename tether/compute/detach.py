"""The host side of a volume detach, step by step as ``spec/detach-flow.md``
gives it (the API side, step 0 and s1, is ComputeAPI.detach_volume):

  s1.1    driver detach (guest side) — only on the server's own host
  s1.1.1  guest device removal: persistent + live, waiting for the event
  s2      host disconnect (skipped while another server here uses the volume)
  s1.2+s1.3 storage side: attachment delete (terminate connection + detach)

Until the guest has let the disk go, a failure rolls back: the volume goes
back to in-use, the disk, mapping, attachment and export stay.  A disk or
domain already gone does not stop the storage side being cleaned.  Once the
guest and the host are done there is no going back: the mapping is released
(with the storage step's start, so that a client who sees the volume
available at once can attach it again at once) and a storage side that
fails is retried, by the sweeper, until it is done.

Every step is idempotent, so a detach a crash interrupted is run again; a
run that finds its mapping already released does the storage side only (the
guest and host steps came before the release).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tether.compute.connections import HostConnections
from tether.compute.operations import ActionRef, Operations
from tether.compute.repository import ComputeRepository, Notice
from tether.compute.volume_client import VolumeClient
from tether.connection import Connector
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.records import BdmRecord, InstanceRecord
from tether.exceptions import VolumeNotFound
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)

S11, S111, S2, S12 = ("s1.1:driver_detach", "s1.1.1:guest_device_removal",
                      "s2:host_disconnect", "s1.2+s1.3:attachment_delete")


@dataclass(frozen=True)
class DetachPolicy:
    timeout: float  # seconds per live-detach attempt
    attempts: int


class DetachFlow:
    def __init__(self, repo: ComputeRepository, virt_driver: virt.VirtDriver,
                 connections: HostConnections, volumes: VolumeClient, ops: Operations,
                 host: str, policy: DetachPolicy) -> None:
        self.repo = repo
        self.virt = virt_driver
        self.connections = connections
        self.volumes = volumes
        self.ops = ops
        self.host = host
        self.policy = policy

    def run(self, ctx: RequestContext, action: ActionRef, inst: InstanceRecord,
            bdm: BdmRecord | None) -> bool:
        """Detach; True when done.  The outcome is recorded on the action
        (the caller is a cast: nobody waits for an exception)."""
        with self.ops.batched():
            if bdm is None or bdm.volume_id is None:
                LOG.warning("detach for %s: no block device mapping, nothing to do",
                            action.instance_uuid)
                self.ops.finish_action(action)
                return True
            with self.connections.guarded(bdm.shared_target):
                return self._run(ctx, action, inst, bdm)

    def _run(self, ctx: RequestContext, action: ActionRef, inst: InstanceRecord,
             bdm: BdmRecord) -> bool:
        payload = _payload(action, bdm)
        if not bdm.deleted:
            try:
                if inst.host == self.host:
                    with self.ops.step(action, S11):
                        self._driver_detach(action, bdm)
                else:
                    LOG.error("Unable to call for a driver detach of volume %s from instance "
                              "%s: the instance is registered to host %s, not this host %s",
                              bdm.volume_id, inst.uuid, inst.host, self.host)
            except Exception as exc:
                self._roll_back(ctx, action, bdm, exc)
                return False

        def release(c: Tx) -> None:
            if not bdm.deleted:
                self.repo.release_bdm(c, bdm)

        try:
            with self.ops.step(action, S12, first=release):
                self._storage_detach(bdm, inst)
        except Exception:
            LOG.exception("detach of volume %s from %s: the guest and the host are done, "
                          "the storage side failed; the sweeper will finish it",
                          bdm.volume_id, inst.uuid)
            return False
        self.ops.finish_action(action, notice=Notice(ctx, "volume.detach.end", payload))
        LOG.info("volume %s detached from instance %s", bdm.volume_id, inst.uuid)
        return True

    def _driver_detach(self, action: ActionRef, bdm: BdmRecord) -> None:
        """s1.1: the guest side, then (s2) the host side."""
        assert bdm.volume_id is not None
        with self.ops.step(action, S111):
            try:
                self.virt.detach_disk(action.instance_uuid, bdm.volume_id,
                                      timeout=self.policy.timeout,
                                      attempts=self.policy.attempts)
            except virt.InstanceNotFound:
                LOG.warning("Instance %s disappeared from the hypervisor during the detach of "
                            "volume %s; cleaning up the storage side", action.instance_uuid,
                            bdm.volume_id)
            except virt.DiskNotFound:
                LOG.warning("Ignoring DiskNotFound for volume %s on instance %s: the disk is "
                            "already gone from the guest", bdm.volume_id,
                            action.instance_uuid)
        with self.ops.step(action, S2):
            self.connections.disconnect(bdm)

    def _storage_detach(self, bdm: BdmRecord, inst: InstanceRecord) -> None:
        """s1.2 + s1.3; both idempotent (a resumed detach runs them again)."""
        assert bdm.volume_id is not None
        if bdm.attachment_id is not None:
            self.volumes.attachment_delete(bdm.attachment_id)
            return
        # the old flow: no attachment id on the mapping
        try:
            attachment = self.volumes.get_volume(bdm.volume_id).attachment_for(inst.uuid)
        except VolumeNotFound:
            LOG.warning("volume %s is gone: nothing to detach on the storage side",
                        bdm.volume_id)
            return
        self.volumes.terminate_connection(bdm.volume_id, self._legacy_connector(bdm,
                                                                                inst.host))
        if attachment is not None:
            self.volumes.detach(bdm.volume_id, attachment)

    def _legacy_connector(self, bdm: BdmRecord, instance_host: str | None) -> Connector:
        """The connector to terminate an old-flow connection with: this host's,
        unless the BDM stashed the connector of another host (the server was
        evacuated) and that host is the server's."""
        mine = self.connections.properties()
        stashed = (bdm.connection_info or {}).get("connector")
        if not stashed:
            LOG.warning("No connector stashed in the connection_info of volume %s; "
                        "terminating the connection of this host (%s)", bdm.volume_id,
                        mine.host)
            return mine
        stash = Connector.from_dict(stashed)
        if stash.host == mine.host:
            return mine
        if stash.host == instance_host:
            LOG.info("Using the connector stashed for host %s to terminate the connection "
                     "of volume %s", stash.host, bdm.volume_id)
            return stash
        LOG.error("The connector stashed for volume %s belongs to host %s, which is "
                  "neither this host (%s) nor the server's host (%s); terminating this "
                  "host's connection instead", bdm.volume_id, stash.host, mine.host,
                  instance_host)
        return mine

    def _roll_back(self, ctx: RequestContext, action: ActionRef, bdm: BdmRecord,
                   exc: Exception) -> None:
        if isinstance(exc, virt.DeviceDetachFailed):
            LOG.error("%s; rolling volume %s back to in-use", exc, bdm.volume_id)
        else:
            LOG.exception("detach of volume %s failed; rolling it back to in-use",
                          bdm.volume_id)
        assert bdm.volume_id is not None
        try:
            self.volumes.roll_detaching(bdm.volume_id)
        except Exception:  # never leave it detaching: the sweeper runs the detach again
            LOG.exception("roll_detaching of volume %s failed; the detach stays open",
                          bdm.volume_id)
            return
        self.ops.finish_action(action, "Error", notice=Notice(
            ctx, "volume.detach.error", _payload(action, bdm) | {"error": str(exc)},
            error=True))


def _payload(action: ActionRef, bdm: BdmRecord) -> dict[str, object]:
    return {"volume_id": bdm.volume_id, "server_id": action.instance_uuid,
            "attachment_id": bdm.attachment_id, "request_id": action.request_id}
