"""The compute service's host side: owns the servers of one hypervisor host.

Runs what the API casts (build, delete, power, attach, detach), one operation
per server at a time (a per-server lock, as Nova's ``synchronized(uuid)``),
and on start resumes what a crash interrupted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import oslo_messaging as messaging
from sqlalchemy import select

from tether.compute import locks
from tether.compute.attach import AttachFlow
from tether.compute.detach import DetachFlow, DetachPolicy, Notify
from tether.compute.images import LocalImages
from tether.compute.locks import HostLocks
from tether.compute.shelve import ShelveFlow
from tether.compute.teardown import VolumeMapping, release_volumes
from tether.compute.volume_client import VolumeClient
from tether.connection import ConnectionInfo
from tether.connectors.base import VolumeConnector
from tether.context import RequestContext, admin_context
from tether.db import models
from tether.db.api import Database
from tether.operations import ActionRef, Operations
from tether.states import server as srv_states
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)

_POWER = {virt.PowerState.RUNNING: srv_states.POWER_RUNNING,
          virt.PowerState.PAUSED: srv_states.POWER_PAUSED,
          virt.PowerState.SHUTOFF: srv_states.POWER_SHUTDOWN,
          virt.PowerState.CRASHED: srv_states.POWER_CRASHED,
          virt.PowerState.NOSTATE: srv_states.POWER_NOSTATE}


class ComputeManager:
    def __init__(self, db: Database, virt_driver: virt.VirtDriver, connector: VolumeConnector,
                 volumes: VolumeClient, host: str, policy: DetachPolicy,
                 images: LocalImages, notify: Notify, host_locks: HostLocks,
                 shelved_offload_time: int = 0, domain_prefix: str = "tether-") -> None:
        self.db = db
        self.shelved_offload_time = shelved_offload_time
        self.host_locks = host_locks
        self.images = images
        self.virt = virt_driver
        self.connector = connector
        self.volumes = volumes
        self.host = host
        self.domain_prefix = domain_prefix
        self.ops = Operations(db, host)
        self.detach = DetachFlow(db, virt_driver, connector, volumes, self.ops, host, policy,
                                 notify)
        self.attach = AttachFlow(db, virt_driver, connector, volumes, self.ops, notify)
        self.shelving = ShelveFlow(db, virt_driver, connector, volumes, self.ops)
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._in_flight: set[int] = set()

    @contextmanager
    def _locked(self, instance_uuid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks[instance_uuid]
        with lock:
            yield

    def _action(self, ctx: RequestContext, instance_uuid: str, action_id: int) -> ActionRef:
        return ActionRef(action_id, instance_uuid, ctx.request_id)

    # -- servers -------------------------------------------------------------

    def build_instance(self, ctx: RequestContext, instance_uuid: str, action_id: int) -> None:
        action = self._action(ctx, instance_uuid, action_id)
        with self._locked(instance_uuid):
            with self.db.session() as s:
                if s.get(models.Instance, instance_uuid) is None:
                    return
            try:
                self._spawn(action, instance_uuid)
            except Exception:
                LOG.exception("building instance %s failed", instance_uuid)
                self._set_state(instance_uuid, srv_states.ERROR, None)
                self.ops.finish_action(action, "Error")
                return
            self._set_state(instance_uuid, srv_states.ACTIVE, None)
            self.ops.finish_action(action)

    def _spawn(self, action: ActionRef, instance_uuid: str) -> None:
        """Start the server's guest on this host as the server says: its image
        (root disk overlay, kernel, console, agent port) or its boot volume."""
        with self.db.session() as s:
            inst = s.get(models.Instance, instance_uuid)
            assert inst is not None
            image_ref = inst.image_ref
            spec = virt.ServerSpec(uuid=inst.uuid, name=self.domain_prefix + inst.uuid,
                                   vcpus=inst.vcpus, memory_mib=inst.memory_mb)
        root = self._root_bdm(instance_uuid)
        if image_ref:
            with self.ops.step(action, "prepare_root_disk"):
                spec = self.images.boot_spec(spec, image_ref)
        if root is not None:
            spec = self._connect_root_volume(action, spec, root)
        with self.ops.step(action, "spawn"):
            self.virt.spawn(spec)
        if root is not None and root.attachment_id:
            with self.ops.step(action, "root_volume_attachment_complete"):
                self.volumes.attachment_complete(root.attachment_id)

    def _root_bdm(self, instance_uuid: str) -> models.BlockDeviceMapping | None:
        with self.db.session() as s:
            bdm = s.scalars(select(models.BlockDeviceMapping).where(
                models.BlockDeviceMapping.instance_uuid == instance_uuid,
                models.BlockDeviceMapping.boot_index == 0,
                models.BlockDeviceMapping.deleted.is_(False))).first()
            if bdm is not None:
                s.expunge(bdm)
            return bdm

    def _connect_root_volume(self, action: ActionRef, spec: virt.ServerSpec,
                             bdm: models.BlockDeviceMapping) -> virt.ServerSpec:
        """Export the boot volume to this host and hand it to the guest as vda."""
        assert bdm.volume_id is not None and bdm.attachment_id is not None
        with self.ops.step(action, "root_volume_connect"):
            info = self.volumes.attachment_update(bdm.attachment_id, dataclasses.replace(
                self.connector.properties(), mountpoint="/dev/vda")).connection_info
            assert info is not None
            source = self.connector.connect(info)
            with self.db.session() as s:
                row = s.get(models.BlockDeviceMapping, bdm.id)
                if row is not None:
                    row.connection_info = info.to_dict(with_secret=False)
        return dataclasses.replace(
            spec, root_volume=virt.DiskSpec(bdm.volume_id, "vda", "virtio", source),
            console_log=self.images.console_log(spec.uuid))

    def _set_state(self, instance_uuid: str, vm_state: str, task_state: str | None) -> None:
        with self.db.session() as s:
            inst = s.get(models.Instance, instance_uuid)
            if inst is None:
                return
            inst.vm_state, inst.task_state = vm_state, task_state
            try:
                inst.power_state = _POWER[self.virt.power_state(instance_uuid)]
            except virt.InstanceNotFound:
                inst.power_state = srv_states.POWER_NOSTATE

    def shelve_action(self, ctx: RequestContext, instance_uuid: str, event: str,
                      action_id: int) -> None:
        action = self._action(ctx, instance_uuid, action_id)
        with self._locked(instance_uuid):
            try:
                if event == "shelve":
                    with self.ops.step(action, "power_off"):
                        self.virt.power_off(instance_uuid)
                    self._set_state(instance_uuid, srv_states.SHELVED, None)
                    if self.shelved_offload_time == 0:
                        event = "shelve_offload"
                if event == "shelve_offload":
                    self.shelving.offload(instance_uuid, action)
                    with self.db.session() as s:
                        inst = s.get(models.Instance, instance_uuid)
                        if inst is not None:
                            inst.host, inst.vm_state, inst.task_state = (
                                None, srv_states.SHELVED_OFFLOADED, None)
                            inst.power_state = srv_states.POWER_NOSTATE
                elif event == "unshelve":
                    self._unshelve(instance_uuid, action)
            except Exception:
                LOG.exception("%s of instance %s failed", event, instance_uuid)
                self._set_state(instance_uuid, srv_states.ERROR, None)
                self.ops.finish_action(action, "Error")
                return
            self.ops.finish_action(action)

    def _unshelve(self, instance_uuid: str, action: ActionRef) -> None:
        try:
            self.virt.power_state(instance_uuid)
        except virt.InstanceNotFound:  # offloaded: the guest comes back on this host
            self._spawn(action, instance_uuid)
            self.shelving.reconnect(instance_uuid, action)
        else:
            with self.ops.step(action, "power_on"):
                self.virt.power_on(instance_uuid)
        self._set_state(instance_uuid, srv_states.ACTIVE, None)

    def power_action(self, ctx: RequestContext, instance_uuid: str, event: str,
                     action_id: int) -> None:
        action = self._action(ctx, instance_uuid, action_id)
        with self._locked(instance_uuid):
            try:
                with self.ops.step(action, event):
                    if event == "stop":
                        self.virt.power_off(instance_uuid)
                    else:
                        self.virt.power_on(instance_uuid)
            except Exception:
                LOG.exception("%s of instance %s failed", event, instance_uuid)
                with self.db.session() as s:
                    inst = s.get(models.Instance, instance_uuid)
                    if inst is not None:
                        inst.task_state = None
                self.ops.finish_action(action, "Error")
                return
            (target,) = srv_states.MACHINE.transition(event).targets
            self._set_state(instance_uuid, target, None)
            self.ops.finish_action(action)

    def terminate_instance(self, ctx: RequestContext, instance_uuid: str,
                           action_id: int) -> None:
        """Delete a server: the domain goes first (so no guest can use a volume any
        more), then each volume is disconnected and detached on the storage side,
        and deleted when its BDM says delete_on_termination."""
        action = self._action(ctx, instance_uuid, action_id)
        with self._locked(instance_uuid):
            try:
                with self.ops.step(action, "destroy_guest"):
                    self.virt.destroy(instance_uuid)
                    self.images.remove(instance_uuid)
            except Exception:
                LOG.exception("deleting instance %s: the guest could not be destroyed",
                              instance_uuid)
                self._set_state(instance_uuid, srv_states.ERROR, None)
                self.ops.finish_action(action, "Error")
                return
            with self.db.session() as s:
                bdms = list(s.scalars(select(models.BlockDeviceMapping).where(
                    models.BlockDeviceMapping.instance_uuid == instance_uuid,
                    models.BlockDeviceMapping.deleted.is_(False))).all())
                for b in bdms:
                    s.expunge(b)
            # the guest is gone: each volume is cleaned on its own
            failed = release_volumes(self.db, self.volumes, self.ops, action, bdms,
                                     disconnect=self._disconnect_for_delete)
            with self.db.session() as s:
                inst = s.get(models.Instance, instance_uuid)
                if inst is not None:
                    inst.vm_state, inst.task_state = srv_states.DELETED, None
                    inst.deleted, inst.deleted_at = True, models.utcnow()
                    inst.power_state = srv_states.POWER_NOSTATE
            self.ops.finish_action(action, "Error" if failed else None)

    def _disconnect_for_delete(self, bdm: VolumeMapping) -> None:
        assert bdm.volume_id is not None
        if bdm.connection_info and not self.detach._other_users_on_host(
                bdm.instance_uuid, bdm.volume_id):
            self.connector.disconnect(ConnectionInfo.from_dict(bdm.connection_info))

    # -- volumes -------------------------------------------------------------

    @contextmanager
    def _running(self, action_id: int) -> Iterator[None]:
        """Mark an action as being worked on here (the sweeper leaves it alone)."""
        with self._guard:
            self._in_flight.add(action_id)
        try:
            yield
        finally:
            with self._guard:
                self._in_flight.discard(action_id)

    def attach_volume(self, ctx: RequestContext, instance_uuid: str, bdm_uuid: str,
                      action_id: int, shared_target: str | None = None) -> None:
        with self._running(action_id), self._locked(instance_uuid), \
                locks.maybe(self.host_locks, shared_target):
            self.attach.run(ctx, instance_uuid, bdm_uuid,
                            self._action(ctx, instance_uuid, action_id))

    def detach_volume(self, ctx: RequestContext, instance_uuid: str, volume_id: str,
                      attachment_id: str | None, action_id: int,
                      shared_target: str | None = None) -> None:
        with self._running(action_id), self._locked(instance_uuid), \
                locks.maybe(self.host_locks, shared_target):
            self.detach.run(ctx, instance_uuid, volume_id, attachment_id,
                            self._action(ctx, instance_uuid, action_id))

    # -- start-up ------------------------------------------------------------

    def prune_instance_files(self) -> list[str]:
        """Remove the folders (console log, root disk overlay ...) of servers
        that are deleted or unknown: a server deleted while no host had it
        (shelved-offloaded) leaves its former host's folder behind.  Folders
        of live servers stay, whichever host runs them (an instances folder
        may be shared) or none (an offloaded server unshelved here boots on
        the root disk it had)."""
        folders = self.images.instance_folders()
        if not folders:
            return []
        with self.db.session() as s:
            live = set(s.scalars(select(models.Instance.uuid).where(
                models.Instance.uuid.in_(folders), models.Instance.deleted.is_(False))))
        gone = [uuid for uuid in folders if uuid not in live]
        for uuid in gone:
            LOG.info("removing the files of deleted server %s", uuid)
            self.images.remove(uuid)
        return gone


    def resume_unfinished(self, older_than: float | None = None) -> int:
        """Operations a crash interrupted (or whose message was lost): a detach
        is run again (its steps are idempotent), an attach is rolled back.  On
        start every unfinished one; from the periodic sweeper only those older
        than ``older_than`` seconds that this process is not running now."""
        ctx = admin_context()
        count = 0
        before = (None if older_than is None
                  else models.utcnow() - dt.timedelta(seconds=older_than))
        for row in self.ops.unfinished(self.host, ("attach_volume", "detach_volume"),
                                       started_before=before):
            with self._guard:
                if row.id in self._in_flight:
                    continue
            action = ActionRef(row.id, row.instance_uuid, row.request_id)
            count += 1
            if row.action == "detach_volume" and row.resource_id:
                LOG.warning("resuming interrupted detach of volume %s from %s",
                            row.resource_id, row.instance_uuid)
                bdm_att = self._attachment_of(row.instance_uuid, row.resource_id)
                self.detach_volume(ctx, row.instance_uuid, row.resource_id, bdm_att, row.id)
            elif row.action == "attach_volume" and row.resource_id:
                LOG.warning("rolling back interrupted attach of volume %s to %s",
                            row.resource_id, row.instance_uuid)
                self.ops.record(action, "resume", "Error", "interrupted; rolled back")
                self.detach_volume(ctx, row.instance_uuid, row.resource_id,
                                   self._attachment_of(row.instance_uuid, row.resource_id),
                                   row.id)
                self.ops.finish_action(action, "Error")
        return count

    def _attachment_of(self, instance_uuid: str, volume_id: str) -> str | None:
        with self.db.session() as s:
            bdm = s.scalars(select(models.BlockDeviceMapping).where(
                models.BlockDeviceMapping.instance_uuid == instance_uuid,
                models.BlockDeviceMapping.volume_id == volume_id,
                models.BlockDeviceMapping.deleted.is_(False))).first()
            return bdm.attachment_id if bdm is not None else None


class ComputeEndpoint:
    """oslo.messaging endpoint: unpacks casts into ComputeManager calls."""

    target = messaging.Target(version="1.0")

    def __init__(self, manager: ComputeManager) -> None:
        self.m = manager

    def build_instance(self, ctx: RequestContext, instance_uuid: str, action_id: int) -> None:
        self.m.build_instance(ctx, instance_uuid, action_id)

    def terminate_instance(self, ctx: RequestContext, instance_uuid: str,
                           action_id: int) -> None:
        self.m.terminate_instance(ctx, instance_uuid, action_id)

    def power_action(self, ctx: RequestContext, instance_uuid: str, event: str,
                     action_id: int) -> None:
        self.m.power_action(ctx, instance_uuid, event, action_id)

    def shelve_action(self, ctx: RequestContext, instance_uuid: str, event: str,
                      action_id: int) -> None:
        self.m.shelve_action(ctx, instance_uuid, event, action_id)

    def attach_volume(self, ctx: RequestContext, instance_uuid: str, bdm_uuid: str,
                      action_id: int, shared_target: str | None = None) -> None:
        self.m.attach_volume(ctx, instance_uuid, bdm_uuid, action_id, shared_target)

    def detach_volume(self, ctx: RequestContext, instance_uuid: str, volume_id: str,
                      attachment_id: str | None, action_id: int,
                      shared_target: str | None = None) -> None:
        self.m.detach_volume(ctx, instance_uuid, volume_id, attachment_id, action_id,
                             shared_target)
