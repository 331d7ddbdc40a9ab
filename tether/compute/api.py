"""The compute service as the REST API sees it: every check of the spec's
step 0 and s1, the operation recorded, then a cast to the server's host.

A request reaches the driver in five frames: handler → ComputeAPI →
ComputeRpcApi (cast) → ComputeManager → virt driver / connector.

How an operation crosses from here to the host without being lost or done
twice (``tether.compute.operations``): the operation is recorded with the
request's state change in one transaction -- ``queued`` when nothing else
happens here, ``api`` (owned by this process) when a step on block storage
comes first (the reservation of an attach, ``begin_detaching``) -- then
``queued`` and cast.  If the cast fails the operation is taken back and
undone here; if this process dies, ``tether.compute.recovery`` undoes or
finishes it.  Volume attachments are :attr:`ComputeAPI.attachments`
(:mod:`tether.compute.attachments`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tether import faults, policy
from tether.compute import flavors
from tether.compute.attach import release_reservation
from tether.compute.attachments import VolumeAttachmentAPI, shared_target
from tether.compute.operations import ActionRef, InFlight, Operations
from tether.compute.repository import ComputeRepository
from tether.compute.rpcapi import ComputeRpcApi
from tether.compute.teardown import release_volumes
from tether.compute.volume_client import VolumeClient, VolumeRef
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.records import ActionRecord, BdmRecord, EventRecord, InstanceRecord
from tether.exceptions import (
    ActionNotFound,
    ComputeServiceDown,
    Conflict,
    FlavorNotFound,
    InstanceInvalidState,
    InstanceLocked,
    QuotaExceeded,
    ServerNotFound,
    ServiceUnavailable,
    VolumeNotFound,
)
from tether.image.registry import ImageRegistry, is_image_id
from tether.quota import UNLIMITED, Excess, OverQuota, Quotas
from tether.states import operation as op_states
from tether.states import server as srv_states
from tether.states.machine import InvalidTransition

LOG = logging.getLogger(__name__)
COMPUTE_BINARY = "tether-compute"
LiveHosts = Callable[[], list[str]]
_TASK_OF = {"stop": srv_states.POWERING_OFF, "start": srv_states.POWERING_ON}


@dataclass(frozen=True)
class RootVolume:
    """``block_device_mapping_v2`` boot index 0: boot from this volume."""

    volume_id: str
    delete_on_termination: bool = False


@dataclass(frozen=True)
class ActionView:
    action: ActionRecord
    events: list[EventRecord]


def nova_state_error(exc: InvalidTransition, server_id: str) -> InstanceInvalidState:
    """Nova's words for a server state that does not allow a request."""
    shown = "none" if exc.current is None else exc.current
    return InstanceInvalidState(f"Cannot '{exc.event}' instance {server_id} while it is in "
                                f"{exc.column} {shown}.")


def quota_exceeded(excess: Excess) -> QuotaExceeded:
    """Nova's words (and 403) for a server that does not fit the quotas."""
    r = excess.resource
    return QuotaExceeded(f"Quota exceeded for {r}: Requested {excess.requested}, but already "
                         f"used {excess.used} of {excess.limit} {r}. Delete servers of this "
                         "project or ask an administrator to raise its quota.")


class ComputeAPI:
    def __init__(self, repo: ComputeRepository, rpcapi: ComputeRpcApi, volumes: VolumeClient,
                 live_hosts: LiveHosts, quotas: Quotas, default_bus: str = "scsi",
                 images: ImageRegistry | None = None,
                 max_disk_devices: int = UNLIMITED) -> None:
        self.repo = repo
        self.quotas = quotas
        # [compute] max_disk_devices_to_attach: disks of one server, -1 unlimited
        self.max_disk_devices = max_disk_devices
        self.images = images
        self.rpcapi = rpcapi
        self.volumes = volumes
        self.live_hosts = live_hosts  # compute hosts with a fresh heartbeat
        self.default_bus = default_bus
        self.ops = Operations(repo, host=None)  # owner: set when the API registers
        self.in_flight = InFlight()  # operations a request thread here works on
        self.attachments = VolumeAttachmentAPI(self)

    # -- operations owned here -------------------------------------------------

    def running(self, action_id: int) -> AbstractContextManager[None]:
        return self.in_flight.running(action_id)

    def hand_over(self, ctx: RequestContext, host: str, row: ActionRecord) -> None:
        """Cast a queued operation to its host.  If the cast fails the
        operation is taken back and undone (unless the host took it anyway)."""
        try:
            self.rpcapi.run_operation(ctx, host, row.instance_uuid, row.id)
        except Exception as exc:
            LOG.exception("could not hand %s of %s to host %s", row.action,
                          row.instance_uuid, host)
            back = self.ops.unqueue(row)
            if back is None:
                return  # the host has it after all
            self.undo(back)
            raise ServiceUnavailable(f"The compute service of {host} could not be reached "
                                     f"({exc}); nothing was changed, retry later.") from exc

    def undo(self, row: ActionRecord) -> None:
        """Undo (or, where that is the only way, finish) an operation whose
        API steps were interrupted; this process owns it.  Also what a cast
        that failed leads to."""
        undo = {"attach_volume": self.attachments.undo_attach,
                "detach_volume": self.attachments.undo_detach,
                "create": self._undo_create, "delete": self._local_delete}.get(row.action)
        if undo is None:  # power, shelve: the server only had its task set
            self._end_task(row)
            return
        with self.running(row.id):
            undo(row)

    def _end_task(self, row: ActionRecord) -> None:
        event = {"stop": "stop_fail", "start": "start_fail", "shelve": "shelve_fail",
                 "shelve_offload": "shelve_offload_fail",
                 "unshelve": "unshelve_fail"}.get(row.action)

        def last(c: Tx) -> None:
            inst = self.repo.server(c, row.instance_uuid)
            if event is not None and inst is not None and srv_states.MACHINE.allows(
                    event, {"vm_state": inst.vm_state, "task_state": inst.task_state}):
                self.repo.apply(c, srv_states.MACHINE, inst, event)

        self.ops.finish_action(ActionRef.of(row), "Error", last=last)

    # -- lookups -------------------------------------------------------------

    def server(self, c: Tx, ctx: RequestContext, server_id: str,
               rule: str = "os_compute_api:servers:show", read_deleted: bool = False
               ) -> InstanceRecord:
        inst = self.repo.server(c, server_id)
        if inst is None or (inst.deleted and not read_deleted) or not policy.allowed(
                ctx, "os_compute_api:servers:show", inst.project_id):
            raise ServerNotFound(server_id)
        policy.authorize(ctx, rule, inst.project_id)
        return inst

    def get_server(self, ctx: RequestContext, server_id: str) -> InstanceRecord:
        with self.repo.begin() as c:
            return self.server(c, ctx, server_id)

    def list_servers(self, ctx: RequestContext, name: Callable[[str], bool] | None = None,
                     all_projects: bool = False, rule: str = "os_compute_api:servers:index"
                     ) -> list[InstanceRecord]:
        """``rule``: the listing's (index or detail); ``all_projects`` also
        needs its ``:get_all_tenants``.  ``name``: Nova's regex filter, compiled
        by the API with a bounded engine (``tether.api.name_filter``); never
        Python's ``re`` here."""
        policy.authorize(ctx, rule)
        if all_projects:
            policy.authorize(ctx, rule + ":get_all_tenants")
        with self.repo.begin() as c:
            rows = self.repo.servers(c, None if all_projects else ctx.project_id)
        rows = [r for r in rows if policy.visible(ctx, "os_compute_api:servers:show",
                                                  r.project_id)]
        if name is not None:
            rows = [r for r in rows if name(r.name)]
        return rows

    def volume_bdms(self, server_ids: list[str]) -> dict[str, list[BdmRecord]]:
        with self.repo.begin() as c:
            return self.repo.volume_bdms(c, server_ids)

    def volume(self, ctx: RequestContext, volume_id: str) -> VolumeRef:
        vol = self.volumes.get_volume(volume_id)
        if not policy.allowed(ctx, "volume:get", vol.project_id):
            raise VolumeNotFound(volume_id)  # another project's volume does not exist for you
        return vol

    def check_host_up(self, inst: InstanceRecord) -> str:
        if inst.host is None:
            raise InstanceInvalidState(f"Instance {inst.uuid} has no host.")
        if inst.host not in self.live_hosts():
            raise ComputeServiceDown(inst.host)
        return inst.host

    @staticmethod
    def check_unlocked(ctx: RequestContext, inst: InstanceRecord) -> None:
        if inst.locked and not policy.allowed(  # admins act on locked servers, as in Nova
                ctx, "os_compute_api:os-lock-server:unlock:unlock_override", inst.project_id):
            raise InstanceLocked(inst.uuid)

    def apply_event(self, c: Tx, inst: InstanceRecord, event: str,
               **values: Any) -> InstanceRecord:
        """The server's ``event``, refused in Nova's words (409)."""
        try:
            return self.repo.apply(c, srv_states.MACHINE, inst, event, values=values)
        except InvalidTransition as exc:
            raise nova_state_error(exc, inst.uuid) from None

    @staticmethod
    def allowed(inst: InstanceRecord, event: str) -> None:
        """The check of ``_apply`` before anything is done."""
        try:
            srv_states.MACHINE.check(event, {"vm_state": inst.vm_state,
                                             "task_state": inst.task_state}, inst.uuid)
        except InvalidTransition as exc:
            raise nova_state_error(exc, inst.uuid) from None

    def _pick_host(self) -> str:
        hosts = self.live_hosts()
        if not hosts:
            raise ServiceUnavailable("No compute service is up to run the server; start "
                                     "`tether serve` or `tether service compute`.")
        with self.repo.begin() as c:
            counts = self.repo.server_counts(c)
        return min(hosts, key=lambda h: (counts.get(h, 0), h))

    # -- servers -------------------------------------------------------------

    def create_server(self, ctx: RequestContext, name: str, flavor_ref: str,
                      image_ref: str | None = None,
                      root_volume: RootVolume | None = None) -> InstanceRecord:
        """A server with no OS, booting a local image, or booting a volume
        (which is reserved here and attached by the host as the boot disk)."""
        policy.authorize(ctx, "os_compute_api:servers:create")
        if root_volume is not None:
            policy.authorize(ctx, "os_compute_api:servers:create:attach_volume")
        flavor = flavors.find(flavor_ref)
        if flavor is None:
            raise FlavorNotFound(flavor_ref)
        if image_ref is not None and is_image_id(image_ref) and self.images is not None:
            image_ref = self.images.bootable(ctx, image_ref).id  # 400 unless it can boot
        host = self._pick_host()
        vol = self.volume(ctx, root_volume.volume_id) if root_volume is not None else None
        try:  # counted and inserted in one transaction, the project locked
            with self.quotas.claim(ctx.project_id, {"instances": 1, "cores": flavor.vcpus,
                                                    "ram": flavor.ram}) as c:
                inst, root, row = self._new_server(c, ctx, name, flavor, host, image_ref,
                                                   root_volume, vol)
        except OverQuota as exc:
            raise quota_exceeded(exc.excess) from None
        faults.point("quota:server_committed")
        if root is not None:
            with self.running(row.id):
                row = self._reserve_root(ctx, inst, root, row)
        self.hand_over(ctx, host, row)
        return inst

    def _new_server(self, c: Tx, ctx: RequestContext, name: str, flavor: flavors.Flavor,
                    host: str, image_ref: str | None, root_volume: RootVolume | None,
                    vol: VolumeRef | None) -> tuple[InstanceRecord, BdmRecord | None,
                                                    ActionRecord]:
        """The server, its boot volume's mapping and the operation (in ``c``)."""
        inst = self.repo.new_server(c, {
            "uuid": str(uuid.uuid4()), "name": name, "project_id": ctx.project_id,
            "user_id": ctx.user_id, "host": host, "flavor_id": flavor.id,
            "vcpus": flavor.vcpus, "memory_mb": flavor.ram, "image_ref": image_ref,
            "power_state": srv_states.POWER_NOSTATE, "locked": False, "meta": {}})
        root = None
        if root_volume is not None and vol is not None:
            root = self.repo.claim_bdm(c, {
                "uuid": str(uuid.uuid4()), "instance_uuid": inst.uuid,
                "volume_id": root_volume.volume_id, "device_name": "/dev/vda",
                "disk_bus": "virtio", "boot_index": 0, "source_type": "volume",
                "destination_type": "volume", "shared_target": shared_target(vol),
                "delete_on_termination": root_volume.delete_on_termination})
        row = self.ops.new(c, ctx, inst.uuid, "create",
                           status=op_states.QUEUED if root is None else op_states.API,
                           args={"root_bdm": root.uuid if root else None})
        faults.point("quota:server_inserted")
        return inst, root, row

    def _reserve_root(self, ctx: RequestContext, inst: InstanceRecord, root: BdmRecord,
                      row: ActionRecord) -> ActionRecord:
        assert root.volume_id is not None
        try:
            attachment = self.volumes.attachment_create(root.volume_id, inst.uuid)
        except Exception:
            with self.repo.begin() as c:  # refused: the server never existed
                self.repo.drop_action(c, row.id)
                self.repo.drop_bdm(c, root.id)
                self.repo.drop_server(c, inst.uuid)
            raise
        with self.repo.begin() as c:
            self.repo.set_bdm(c, root, {"attachment_id": attachment.id})
            return self.queue(c, row, attachment.id)

    def queue(self, c: Tx, row: ActionRecord, attachment_id: str | None) -> ActionRecord:
        """Hand an ``api`` operation on to its host, unless a recovery took it
        from this process meanwhile (then what this process reserved goes)."""
        try:
            return self.ops.queue(c, row)
        except (InvalidTransition, Conflict):
            if attachment_id is not None:
                self.volumes.attachment_delete(attachment_id)
            raise ServiceUnavailable("This request took too long and was undone; retry "
                                     "it.") from None

    def _undo_create(self, row: ActionRecord) -> None:
        """A boot from volume interrupted before its cast: storage's
        reservation goes, the server is in error."""
        root_uuid = (row.args or {}).get("root_bdm")
        with self.repo.begin() as c:
            root = self.repo.bdm(c, root_uuid) if root_uuid else None
        if root is not None and not root.deleted:
            release_reservation(self.repo, self.volumes, row.instance_uuid, root)

        def last(c: Tx) -> None:
            if root is not None and not root.deleted:
                self.repo.release_bdm(c, root)
            inst = self.repo.server(c, row.instance_uuid)
            if inst is not None and inst.task_state == srv_states.SPAWNING:
                self.repo.apply(c, srv_states.MACHINE, inst, "build_fail")

        self.ops.finish_action(ActionRef.of(row), "Error", last=last)

    def delete_server(self, ctx: RequestContext, server_id: str) -> None:
        with self.repo.begin() as c:
            inst = self.server(c, ctx, server_id, "os_compute_api:servers:delete")
            self.check_unlocked(ctx, inst)
            if inst.task_state == srv_states.DELETING:
                return  # under way (and finished by a recovery if its worker died)
            if inst.host is not None:
                self.check_host_up(inst)
            inst = self.apply_event(c, inst, "delete")
            row = self.ops.new(c, ctx, server_id, "delete", status=(
                op_states.API if inst.host is None else op_states.QUEUED))
        if inst.host is None:
            with self.running(row.id):
                self._local_delete(row)
        else:
            self.hand_over(ctx, inst.host, row)

    def _local_delete(self, row: ActionRecord) -> None:
        """A server without a host (shelved-offloaded) has no guest and no host
        connection to undo: its volumes are released from here and the
        server is gone when the request returns (Nova's local delete).  Files
        a former host kept for it (an image's root disk overlay) go at that
        host's next start.  Idempotent: a recovery runs it again."""
        action = ActionRef.of(row)
        failed = release_volumes(self.repo, self.volumes, self.ops, action)

        def last(c: Tx) -> None:
            inst = self.repo.server(c, row.instance_uuid)
            if inst is not None and not inst.deleted:
                self.repo.apply(c, srv_states.MACHINE, inst, "delete_done", values={
                    "deleted": True, "deleted_at": row.start_time,
                    "power_state": srv_states.POWER_NOSTATE})

        self.ops.finish_action(action, "Error" if failed else None, last=last)

    def power_action(self, ctx: RequestContext, server_id: str, event: str) -> None:
        """``stop`` or ``start``."""
        with self.repo.begin() as c:
            inst = self.server(c, ctx, server_id, f"os_compute_api:servers:{event}")
            self.check_unlocked(ctx, inst)
            host = self.check_host_up(inst)
            self.apply_event(c, inst, event)
            row = self.ops.new(c, ctx, server_id, event, status=op_states.QUEUED)
        self.hand_over(ctx, host, row)

    def shelve_action(self, ctx: RequestContext, server_id: str, event: str) -> None:
        """``shelve``, ``shelve_offload`` or ``unshelve`` (an offloaded server
        is unshelved on the least busy live host)."""
        with self.repo.begin() as c:
            inst = self.server(c, ctx, server_id, f"os_compute_api:os-shelve:{event}")
            self.check_unlocked(ctx, inst)
            self.allowed(inst, event)
        host = inst.host if inst.host is not None else self._pick_host()
        if host not in self.live_hosts():
            raise ComputeServiceDown(host)
        with self.repo.begin() as c:
            inst = self.apply_event(c, inst, event, host=host)
            row = self.ops.new(c, ctx, server_id, event, status=op_states.QUEUED)
        self.hand_over(ctx, host, row)

    def lock(self, ctx: RequestContext, server_id: str, locked: bool) -> None:
        with self.repo.begin() as c:
            inst = self.server(c, ctx, server_id, "os_compute_api:os-lock-server:lock" if locked
                             else "os_compute_api:os-lock-server:unlock")
            override = policy.allowed(
                ctx, "os_compute_api:os-lock-server:unlock:unlock_override", inst.project_id)
            if not locked and inst.locked and inst.locked_by == "admin" and not override:
                raise InstanceLocked(server_id)
            self.repo.set_server(c, inst, {
                "locked": locked,
                "locked_by": ("admin" if ctx.is_admin else "owner") if locked else None})
            row = self.ops.new(c, ctx, server_id, "lock" if locked else "unlock",
                               status=op_states.API)
            self.repo.apply(c, op_states.MACHINE, row, "succeed",
                            values={"finish_time": row.start_time})

    # -- instance actions ----------------------------------------------------

    def list_actions(self, ctx: RequestContext, server_id: str, read_deleted: bool = False
                     ) -> list[ActionRecord]:
        """``read_deleted``: a deleted server's too (microversion 2.21)."""
        with self.repo.begin() as c:
            self.server(c, ctx, server_id, "os_compute_api:os-instance-actions:list",
                        read_deleted)
            return self.repo.actions(c, server_id)

    def get_action(self, ctx: RequestContext, server_id: str, request_id: str,
                   read_deleted: bool = False) -> ActionView:
        with self.repo.begin() as c:
            self.server(c, ctx, server_id, "os_compute_api:os-instance-actions:show",
                        read_deleted)
            action = self.repo.action_by_request(c, server_id, request_id)
            if action is None:
                raise ActionNotFound(server_id, request_id)
            return ActionView(action, self.repo.events(c, action.id))
