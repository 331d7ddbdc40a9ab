"""The host side of a volume detach, step by step as ``spec/detach-flow.md``
gives it (the API side, step 0 and s1, is ComputeAPI.detach_volume):

  s1.1    driver detach (guest side) — only on the server's own host
  s1.1.1  guest device removal: persistent + live, waiting for the event
  s2      host disconnect (skipped while another server here uses the volume)
  s1.2+s1.3 storage side: attachment delete (terminate connection + detach)

Guest refused → the volume rolls back to in-use, the disk, BDM, attachment
and export stay; any other error → the same rollback.  A disk or domain
already gone does not stop the storage side being cleaned.  Every step is
idempotent, so a detach interrupted by a crash is simply run again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select

from tether.compute.volume_client import VolumeClient
from tether.connection import ConnectionInfo, Connector
from tether.connectors.base import VolumeConnector
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import BDMS, INSTANCES, BdmRecord, by
from tether.operations import ActionRef, Operations
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)
# (context, event type, payload, is_error): see tether.notifications
Notify = Callable[[RequestContext, str, dict[str, Any], bool], None]

_B, _I = BDMS.columns, INSTANCES.columns
_LIVE_BDM = Prepared(by(BDMS, _B["instance_uuid"] == bindparam("server_id"),
                        _B["volume_id"] == bindparam("volume_id"), _B["deleted"].is_(False)))
# another server on this host still maps the volume (multiattach)
_OTHER_USERS_ON_HOST = Prepared(select(_B["id"]).join(
    INSTANCES.table, _I["uuid"] == _B["instance_uuid"]).where(
    _B["volume_id"] == bindparam("volume_id"), _B["deleted"].is_(False),
    _B["instance_uuid"] != bindparam("server_id"), _I["host"] == bindparam("host")).limit(1))


@dataclass(frozen=True)
class DetachPolicy:
    timeout: float  # seconds per live-detach attempt
    attempts: int


class DetachFlow:
    def __init__(self, db: Database, virt_driver: virt.VirtDriver, connector: VolumeConnector,
                 volumes: VolumeClient, ops: Operations, host: str,
                 policy: DetachPolicy, notify: Notify) -> None:
        self.notify = notify
        self.db = db
        self.virt = virt_driver
        self.connector = connector
        self.volumes = volumes
        self.ops = ops
        self.host = host
        self.policy = policy

    def run(self, ctx: RequestContext, instance_uuid: str, volume_id: str,
            attachment_id: str | None, action: ActionRef) -> bool:
        """Detach; True on success.  Failures are recorded on the action (the
        caller is a cast: nobody waits for an exception)."""
        with self.ops.batched():
            return self._run(ctx, instance_uuid, volume_id, attachment_id, action)

    def _run(self, ctx: RequestContext, instance_uuid: str, volume_id: str,
             attachment_id: str | None, action: ActionRef) -> bool:
        with self.db.begin() as c:
            bdm = BDMS.first(c, _LIVE_BDM, {"server_id": instance_uuid, "volume_id": volume_id})
            inst = INSTANCES.get(c, instance_uuid)
        if bdm is None or inst is None:
            LOG.warning("detach of volume %s from %s: no block device mapping, nothing to do",
                        volume_id, instance_uuid)
            self.ops.finish_action(action)
            return True
        info = _connection_info(bdm)
        payload = {"volume_id": volume_id, "server_id": instance_uuid,
                   "attachment_id": attachment_id, "request_id": action.request_id}
        self.notify(ctx, "volume.detach.start", payload, False)
        try:
            if inst.host == self.host:
                with self.ops.step(action, "s1.1:driver_detach"):
                    self._driver_detach(instance_uuid, volume_id, info, action)
            else:
                LOG.error("Unable to call for a driver detach of volume %s from instance %s: "
                          "the instance is registered to host %s, not this host %s", volume_id,
                          instance_uuid, inst.host, self.host)
            # the BDM goes first (with the step's start): once storage says
            # 'available' a client may attach the volume again at once, and
            # must not find it still mapped
            with self.ops.step(action, "s1.2+s1.3:attachment_delete",
                               first=lambda c: _bdm_deleted(c, bdm.id, True)):
                try:
                    if attachment_id is not None:
                        self.volumes.attachment_delete(attachment_id)
                    else:  # the old flow: no attachment id on the BDM
                        self.volumes.terminate_connection(
                            volume_id, self._legacy_connector(bdm, inst.host))
                        self.volumes.detach(volume_id, None)
                except Exception:
                    self._mark_bdm(bdm.id, deleted=False)
                    raise
        except Exception as exc:
            self._roll_back(volume_id, action, exc)
            self.notify(ctx, "volume.detach.error", payload | {"error": str(exc)}, True)
            return False
        self.ops.finish_action(action)
        self.notify(ctx, "volume.detach.end", payload, False)
        LOG.info("volume %s detached from instance %s", volume_id, instance_uuid)
        return True

    def _driver_detach(self, instance_uuid: str, volume_id: str, info: ConnectionInfo | None,
                       action: ActionRef) -> None:
        """s1.1: the guest side, then (s2) the host side."""
        with self.ops.step(action, "s1.1.1:guest_device_removal"):
            try:
                self.virt.detach_disk(instance_uuid, volume_id, timeout=self.policy.timeout,
                                      attempts=self.policy.attempts)
            except virt.InstanceNotFound:
                LOG.warning("Instance %s disappeared from the hypervisor during the detach of "
                            "volume %s; cleaning up the storage side", instance_uuid, volume_id)
            except virt.DiskNotFound:
                LOG.warning("Ignoring DiskNotFound for volume %s on instance %s: the disk is "
                            "already gone from the guest", volume_id, instance_uuid)
        with self.ops.step(action, "s2:host_disconnect"):
            if self._other_users_on_host(instance_uuid, volume_id):
                LOG.info("Detected multiple connections on this host for volume %s, "
                         "skipping target disconnect", volume_id)
            elif info is not None:
                self.connector.disconnect(info)

    def _legacy_connector(self, bdm: BdmRecord,
                          instance_host: str | None) -> Connector:
        """The connector to terminate an old-flow connection with: this host's,
        unless the BDM stashed the connector of another host (the server was
        evacuated) and that host is the server's."""
        mine = self.connector.properties()
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

    def _mark_bdm(self, bdm_id: int, deleted: bool) -> None:
        with self.db.begin() as c:
            _bdm_deleted(c, bdm_id, deleted)

    def _other_users_on_host(self, instance_uuid: str, volume_id: str) -> bool:
        with self.db.begin() as c:
            return _OTHER_USERS_ON_HOST.first(c, {
                "volume_id": volume_id, "server_id": instance_uuid,
                "host": self.host}) is not None

    def _roll_back(self, volume_id: str, action: ActionRef, exc: Exception) -> None:
        if isinstance(exc, virt.DeviceDetachFailed):
            LOG.error("%s; rolling volume %s back to in-use", exc, volume_id)
        else:
            LOG.exception("detach of volume %s failed; rolling it back to in-use", volume_id)
        try:
            self.volumes.roll_detaching(volume_id)
        except Exception:
            LOG.exception("roll_detaching of volume %s failed", volume_id)
        self.ops.finish_action(action, "Error")


def _bdm_deleted(conn: Tx, bdm_id: int, deleted: bool) -> None:
    BDMS.update(conn, bdm_id, {"deleted": deleted,
                               "deleted_at": models.utcnow() if deleted else None})


def _connection_info(bdm: BdmRecord) -> ConnectionInfo | None:
    if not bdm.connection_info:
        return None
    return ConnectionInfo.from_dict(bdm.connection_info)
