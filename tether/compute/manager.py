"""The compute service's host side: owns the servers of one hypervisor host.

Every operation the API hands to this host is a recorded instance action;
the message only says which one (``run_operation``).  The host claims it
(queued → running, owned by this service's incarnation) before doing
anything, so a message delivered twice, or delivered while a recovery already
runs the operation, does nothing the second time.  Operations on one server
run one at a time (a per-server lock, as Nova's ``synchronized(uuid)``).
What each operation does when a crash interrupted it is
``tether.compute.recovery``'s.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import oslo_messaging as messaging

from tether.compute.attach import AttachFlow
from tether.compute.connections import HostConnections
from tether.compute.detach import DetachFlow, DetachPolicy
from tether.compute.images import LocalImages
from tether.compute.operations import ActionRef, InFlight, Operations
from tether.compute.repository import ComputeRepository, Notice
from tether.compute.shelve import ShelveFlow
from tether.compute.teardown import release_volumes
from tether.compute.volume_client import VolumeClient
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.models import utcnow
from tether.db.records import ActionRecord, BdmRecord, InstanceRecord
from tether.exceptions import Conflict
from tether.states import server as srv_states
from tether.states.machine import InvalidTransition
from tether.virt import driver as virt

LOG = logging.getLogger(__name__)

_POWER = {virt.PowerState.RUNNING: srv_states.POWER_RUNNING,
          virt.PowerState.PAUSED: srv_states.POWER_PAUSED,
          virt.PowerState.SHUTOFF: srv_states.POWER_SHUTDOWN,
          virt.PowerState.CRASHED: srv_states.POWER_CRASHED,
          virt.PowerState.NOSTATE: srv_states.POWER_NOSTATE}


@dataclass(frozen=True)
class Claimed:
    """An operation this host has claimed, with what it works on (read in the
    claim's transaction)."""

    ctx: RequestContext
    row: ActionRecord
    inst: InstanceRecord
    bdm: BdmRecord | None  # the block device mapping of an attach or a detach

    @property
    def action(self) -> ActionRef:
        return ActionRef.of(self.row)


Work = Callable[[Claimed], None]


class ComputeManager:
    def __init__(self, repo: ComputeRepository, virt_driver: virt.VirtDriver,
                 connections: HostConnections, volumes: VolumeClient, host: str,
                 policy: DetachPolicy, images: LocalImages,
                 shelved_offload_time: int = 0,
                 domain_prefix: str = virt.NAME_PREFIX) -> None:
        self.repo = repo
        self.shelved_offload_time = shelved_offload_time
        self.images = images
        self.virt = virt_driver
        self.connections = connections
        self.volumes = volumes
        self.host = host
        self.domain_prefix = domain_prefix
        self.ops = Operations(repo, host)
        self.detach = DetachFlow(repo, virt_driver, connections, volumes, self.ops, host,
                                 policy)
        self.attach = AttachFlow(repo, virt_driver, connections, volumes, self.ops)
        self.shelving = ShelveFlow(repo, virt_driver, connections, volumes, self.ops)
        self._locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self.in_flight = InFlight()  # operations a thread here works on
        self._work: dict[str, Work] = {
            "attach_volume": self._attach, "detach_volume": self._detach,
            "create": self._build, "delete": self._delete, "stop": self._power,
            "start": self._power, "shelve": self._shelve, "shelve_offload": self._shelve,
            "unshelve": self._unshelve}

    @contextmanager
    def _locked(self, instance_uuid: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks[instance_uuid]
        with lock:
            yield

    # -- the one entry ---------------------------------------------------------

    def run_operation(self, ctx: RequestContext, instance_uuid: str, action_id: int) -> bool:
        """Claim the operation and do it; False when there was nothing to do
        (finished already, or another worker has it)."""
        return self.claimed(ctx, instance_uuid, action_id, self.do)

    def claimed(self, ctx: RequestContext, instance_uuid: str, action_id: int,
                then: Work) -> bool:
        """Claim the operation (with what it works on), then ``then`` it."""
        with self.in_flight.running(action_id), self._locked(instance_uuid):
            with self.repo.begin() as c:
                found = self.repo.action_and_server(c, action_id)
                if found is None or found[0].finish_time is not None:
                    return False
                row, inst = found
                bdm_uuid = (row.args or {}).get("bdm")
                bdm = self.repo.bdm(c, bdm_uuid) if bdm_uuid else None
                mine = self.ops.claim(c, row, _start_notice(ctx, row, bdm))
            if mine is None:
                LOG.info("operation %s (%s) of %s is someone else's; skipped", action_id,
                         row.action, instance_uuid)
                return False
            then(Claimed(ctx, mine, inst, bdm))
            return True

    def do(self, op: Claimed) -> None:
        work = self._work.get(op.row.action)
        if work is None:
            LOG.error("operation %s: no such operation %r", op.row.id, op.row.action)
            self.ops.finish_action(op.action, "Error")
            return
        work(op)

    # -- volumes -------------------------------------------------------------

    def _attach(self, op: Claimed) -> None:
        self.attach.run(op.ctx, op.action, op.bdm)

    def _detach(self, op: Claimed) -> None:
        self.detach.run(op.ctx, op.action, op.inst, op.bdm)

    # -- servers -------------------------------------------------------------

    def _finish(self, action: ActionRef, inst: InstanceRecord, event: str,
                message: str | None = None, **values: object) -> None:
        """End the operation with the server's ``event`` in the same
        transaction.  A server a delete took meanwhile is the delete's: its
        state is left alone."""
        def last(c: Tx) -> None:
            now = self.repo.server(c, inst.uuid)
            if now is None:
                return
            try:
                self.repo.apply(c, srv_states.MACHINE, now, event, values=values)
            except (InvalidTransition, Conflict) as exc:
                LOG.warning("%s of server %s: its state is not this operation's any more "
                            "(%s)", event, inst.uuid, exc)

        self.ops.finish_action(action, message, last=last)

    def _power_state(self, instance_uuid: str) -> int:
        try:
            return _POWER[self.virt.power_state(instance_uuid)]
        except virt.InstanceNotFound:
            return srv_states.POWER_NOSTATE

    def _build(self, op: Claimed) -> None:
        action, inst = op.action, op.inst
        try:
            self._spawn(action, inst)
        except Exception:
            LOG.exception("building instance %s failed", inst.uuid)
            self._finish(action, inst, "build_fail", "Error",
                         power_state=self._power_state(inst.uuid))
            return
        self._finish(action, inst, "build_done", power_state=self._power_state(inst.uuid))

    def _spawn(self, action: ActionRef, inst: InstanceRecord) -> None:
        """Start the server's guest on this host as the server says: its image
        (root disk overlay, kernel, console, agent port) or its boot volume.
        Idempotent: a build or an unshelve interrupted is run again."""
        spec = virt.ServerSpec(uuid=inst.uuid, name=self.domain_prefix + inst.uuid,
                               vcpus=inst.vcpus, memory_mib=inst.memory_mb)
        with self.repo.begin() as c:
            root = next((b for b in self.repo.live_bdms(c, inst.uuid) if b.boot_index == 0),
                        None)
        if inst.image_ref:
            with self.ops.step(action, "prepare_root_disk"):
                spec = self.images.boot_spec(spec, inst.image_ref)
        if root is not None:
            spec = self._connect_root_volume(action, spec, root)
        with self.ops.step(action, "spawn"):
            self.virt.spawn(spec)
        if root is not None and root.attachment_id:
            with self.ops.step(action, "root_volume_attachment_complete"):
                self.volumes.attachment_complete(root.attachment_id)

    def _connect_root_volume(self, action: ActionRef, spec: virt.ServerSpec,
                             bdm: BdmRecord) -> virt.ServerSpec:
        """Export the boot volume to this host and hand it to the guest as vda."""
        assert bdm.volume_id is not None and bdm.attachment_id is not None
        with self.ops.step(action, "root_volume_connect"), \
                self.connections.guarded(bdm.shared_target):
            connector = self.connections.properties("/dev/vda")
            info = self.volumes.attachment_update(bdm.attachment_id,
                                                  connector).connection_info
            assert info is not None
            with self.repo.begin() as c:
                bdm = self.repo.set_bdm(c, bdm, {
                    "connection_info": info.to_dict(with_secret=False),
                    "connector": connector.to_dict()})
            source = self.connections.connect(bdm, info)
        assert bdm.volume_id is not None
        return dataclasses.replace(
            spec, root_volume=virt.DiskSpec(bdm.volume_id, "vda", "virtio", source),
            console_log=self.images.console_log(spec.uuid))

    def _power(self, op: Claimed) -> None:
        action, inst = op.action, op.inst
        event = op.row.action  # stop / start
        try:
            with self.ops.step(action, event):
                if event == "stop":
                    self.virt.power_off(inst.uuid)
                else:
                    self.virt.power_on(inst.uuid)
        except Exception:
            LOG.exception("%s of instance %s failed", event, inst.uuid)
            self._finish(action, inst, f"{event}_fail", "Error")
            return
        self._finish(action, inst, f"{event}_done", power_state=self._power_state(inst.uuid))

    def _shelve(self, op: Claimed) -> None:
        """``shelve`` (and offload at once when ``shelved_offload_time`` is 0)
        or ``shelve_offload``; a resumed one carries on from the task the
        server is in."""
        action, inst = op.action, op.inst
        try:
            if inst.task_state == srv_states.SHELVING:
                with self.ops.step(action, "power_off"):
                    self.virt.power_off(inst.uuid)
                offload = self.shelved_offload_time == 0
                with self.repo.begin() as c:
                    inst = self.repo.apply(
                        c, srv_states.MACHINE, inst,
                        "shelve_done_offloading" if offload else "shelve_done",
                        values={"power_state": self._power_state(inst.uuid)})
                if not offload:
                    self.ops.finish_action(action)
                    return
            self.shelving.offload(action)
        except Exception:
            LOG.exception("%s of instance %s failed", op.row.action, inst.uuid)
            self._finish(action, inst, ("shelve_fail" if inst.task_state == srv_states.SHELVING
                                        else "shelve_offload_fail"), "Error")
            return
        self._finish(action, inst, "shelve_offload_done", host=None,
                     power_state=srv_states.POWER_NOSTATE)

    def _unshelve(self, op: Claimed) -> None:
        """An offloaded server comes back on this host (its guest spawned, every
        volume reconnected); a shelved one is powered on.  Which one the
        server's vm_state says, not whether a guest exists: an unshelve a
        crash interrupted after the spawn still has its volumes to reconnect
        (both steps are idempotent)."""
        action, inst = op.action, op.inst
        try:
            if inst.vm_state == srv_states.SHELVED_OFFLOADED:
                self._spawn(action, inst)
                self.shelving.reconnect(action)
            else:
                with self.ops.step(action, "power_on"):
                    self.virt.power_on(inst.uuid)
        except Exception:
            LOG.exception("unshelve of instance %s failed", inst.uuid)
            self._finish(action, inst, "unshelve_fail", "Error")
            return
        self._finish(action, inst, "unshelve_done", power_state=self._power_state(inst.uuid))

    def _delete(self, op: Claimed) -> None:
        """Delete a server: the domain goes first (so no guest can use a volume any
        more), then each volume is disconnected (forced) and detached on the
        storage side, and deleted when its mapping says delete_on_termination."""
        action, inst = op.action, op.inst
        try:
            with self.ops.step(action, "destroy_guest"):
                self.virt.destroy(inst.uuid)
                self.images.remove(inst.uuid)
        except Exception:
            LOG.exception("deleting instance %s: the guest could not be destroyed",
                          inst.uuid)
            self._finish(action, inst, "delete_fail", "Error")
            return
        failed = release_volumes(self.repo, self.volumes, self.ops, action,
                                 lambda b: self.connections.disconnect(b, force=True))
        self._finish(action, inst, "delete_done", "Error" if failed else None,
                     deleted=True, deleted_at=utcnow(), power_state=srv_states.POWER_NOSTATE)

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
        with self.repo.begin() as c:
            live = self.repo.live_server_ids(c, folders)
        gone = [uuid for uuid in folders if uuid not in live]
        for uuid in gone:
            LOG.info("removing the files of deleted server %s", uuid)
            self.images.remove(uuid)
        return gone


def _start_notice(ctx: RequestContext, row: ActionRecord, bdm: BdmRecord | None
                  ) -> Notice | None:
    if row.action not in ("attach_volume", "detach_volume") or bdm is None:
        return None
    verb = row.action.split("_")[0]
    return Notice(ctx, f"volume.{verb}.start", {
        "volume_id": bdm.volume_id, "server_id": row.instance_uuid,
        "attachment_id": bdm.attachment_id, "request_id": row.request_id})


class ComputeEndpoint:
    """oslo.messaging endpoint: the one cast the compute service takes."""

    target = messaging.Target(version="1.0")

    def __init__(self, manager: ComputeManager) -> None:
        self.m = manager

    def run_operation(self, ctx: RequestContext, instance_uuid: str, action_id: int) -> None:
        self.m.run_operation(ctx, instance_uuid, action_id)
