"""The compute service as the REST API sees it: every check of the spec's
step 0 and s1, then a cast to the server's host.

A request reaches the driver in five frames: handler → ComputeAPI →
ComputeRpcApi (cast) → ComputeManager → virt driver / connector.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select

from tether import policy
from tether.compute import flavors
from tether.compute.rpcapi import ComputeRpcApi
from tether.compute.teardown import release_volumes
from tether.compute.volume_client import VolumeClient, VolumeRef
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import BDMS, INSTANCES, BdmRecord, InstanceRecord, by, grouped
from tether.exceptions import (
    ActionNotFound,
    ComputeServiceDown,
    FlavorNotFound,
    InstanceInvalidState,
    InstanceLocked,
    InvalidInput,
    InvalidVolume,
    ServerNotFound,
    ServiceUnavailable,
    VolumeNotAttached,
    VolumeNotFound,
)
from tether.image.registry import ImageRegistry, is_image_id
from tether.operations import ActionRef, Operations
from tether.states import server as srv_states
from tether.states.machine import InvalidTransition

LOG = logging.getLogger(__name__)
COMPUTE_BINARY = "tether-compute"
_DEVICE_RE = re.compile(r"^/dev/(sd|vd)([a-z]{1,2})$")
LiveHosts = Callable[[], list[str]]
_I, _B = INSTANCES.columns, BDMS.columns
_SERVER_BDMS = Prepared(by(BDMS, _B["instance_uuid"] == bindparam("server_id"),
                           _B["deleted"].is_(False), order=[_B["id"]]))
_VOLUME_BDMS = by(BDMS, _B["instance_uuid"].in_(bindparam("server_ids", expanding=True)),
                  _B["deleted"].is_(False), _B["volume_id"].is_not(None), order=[_B["id"]])


@dataclass(frozen=True)
class RootVolume:
    """``block_device_mapping_v2`` boot index 0: boot from this volume."""

    volume_id: str
    delete_on_termination: bool = False


@dataclass(frozen=True)
class ActionView:
    action: models.InstanceAction
    events: list[models.InstanceActionEvent]


class ComputeAPI:
    def __init__(self, db: Database, rpcapi: ComputeRpcApi, volumes: VolumeClient,
                 live_hosts: LiveHosts, default_bus: str = "scsi",
                 images: ImageRegistry | None = None) -> None:
        self.db = db
        self.images = images
        self.rpcapi = rpcapi
        self.volumes = volumes
        self.live_hosts = live_hosts  # compute hosts with a fresh heartbeat
        self.default_bus = default_bus
        self.ops = Operations(db, host=None)

    # -- lookups -------------------------------------------------------------

    def _server(self, c: Tx, ctx: RequestContext, server_id: str,
                rule: str = "server:get", read_deleted: bool = False) -> InstanceRecord:
        inst = INSTANCES.get(c, server_id)
        if inst is None or (inst.deleted and not read_deleted) or not policy.allowed(
                ctx, "server:get", inst.project_id):
            raise ServerNotFound(server_id)
        policy.authorize(ctx, rule, inst.project_id)
        return inst

    def get_server(self, ctx: RequestContext, server_id: str) -> InstanceRecord:
        with self.db.begin() as c:
            return self._server(c, ctx, server_id)

    def list_servers(self, ctx: RequestContext, name: str | None = None,
                     all_projects: bool = False) -> list[InstanceRecord]:
        policy.authorize(ctx, "server:list")
        if all_projects:
            policy.authorize(ctx, "server:all_projects")
        q = by(INSTANCES, _I["deleted"].is_(False), order=[_I["created_at"].desc()])
        if not all_projects:
            q = q.where(_I["project_id"] == ctx.project_id)
        with self.db.begin() as c:
            rows = INSTANCES.all(c, q)
        if name is not None:
            pattern = re.compile(name)  # Nova treats the filter as a regex
            rows = [r for r in rows if pattern.search(r.name)]
        return rows

    def volume_bdms(self, server_ids: list[str]) -> dict[str, list[BdmRecord]]:
        if not server_ids:
            return {}
        with self.db.begin() as c:
            rows = BDMS.all(c, _VOLUME_BDMS, {"server_ids": server_ids})
        return grouped(server_ids, rows, lambda b: b.instance_uuid)

    # -- servers -------------------------------------------------------------

    def create_server(self, ctx: RequestContext, name: str, flavor_ref: str,
                      image_ref: str | None = None,
                      root_volume: RootVolume | None = None) -> InstanceRecord:
        """A server with no OS, booting a local image, or booting a volume
        (which is reserved here and attached by the host as the boot disk)."""
        policy.authorize(ctx, "server:create")
        flavor = flavors.find(flavor_ref)
        if flavor is None:
            raise FlavorNotFound(flavor_ref)
        if image_ref is not None and is_image_id(image_ref) and self.images is not None:
            image_ref = self.images.bootable(ctx, image_ref).id  # 400 unless it can boot
        host = self._pick_host()
        if root_volume is not None:
            self._volume(ctx, root_volume.volume_id)  # 404 for unknown / others' volumes
        with self.db.begin() as c:
            inst = INSTANCES.insert(c, {
                "uuid": str(uuid.uuid4()), "name": name, "project_id": ctx.project_id,
                "user_id": ctx.user_id, "host": host, "flavor_id": flavor.id,
                "vcpus": flavor.vcpus, "memory_mb": flavor.ram, "image_ref": image_ref,
                "vm_state": srv_states.BUILDING, "task_state": "spawning",
                "power_state": srv_states.POWER_NOSTATE, "locked": False, "meta": {},
                "created_at": models.utcnow(), "deleted": False})
        if root_volume is not None:
            try:
                attachment = self.volumes.attachment_create(root_volume.volume_id, inst.uuid)
            except Exception:
                with self.db.begin() as c:
                    c.execute(delete(INSTANCES.table).where(_I["uuid"] == inst.uuid))
                raise
            with self.db.begin() as c:
                BDMS.insert(c, {
                    "uuid": str(uuid.uuid4()), "instance_uuid": inst.uuid,
                    "volume_id": root_volume.volume_id, "attachment_id": attachment.id,
                    "device_name": "/dev/vda", "disk_bus": "virtio", "boot_index": 0,
                    "source_type": "volume", "destination_type": "volume",
                    "delete_on_termination": root_volume.delete_on_termination,
                    "created_at": models.utcnow(), "deleted": False})
        action = self.ops.start_action(ctx, inst.uuid, "create")
        self.rpcapi.build_instance(ctx, host, inst.uuid, action.id)
        return inst

    def _pick_host(self) -> str:
        hosts = self.live_hosts()
        if not hosts:
            raise ServiceUnavailable("No compute service is up to run the server; start "
                                     "`tether serve` or `tether service compute`.")
        with self.db.begin() as c:
            counts: dict[str | None, int] = {host: n for host, n in c.execute(
                select(_I["host"], func.count()).where(_I["deleted"].is_(False)).group_by(
                    _I["host"]))}
        return min(hosts, key=lambda h: (counts.get(h, 0), h))

    def _check_host_up(self, inst: InstanceRecord) -> str:
        if inst.host is None:
            raise InstanceInvalidState(f"Instance {inst.uuid} has no host.")
        if inst.host not in self.live_hosts():
            raise ComputeServiceDown(inst.host)
        return inst.host

    def _check_unlocked(self, ctx: RequestContext, inst: InstanceRecord) -> None:
        if inst.locked and not ctx.is_admin:  # admins act on locked servers, as in Nova
            raise InstanceLocked(inst.uuid)

    def _check_state(self, inst: InstanceRecord, event: str) -> None:
        try:
            srv_states.MACHINE.check(event, inst.vm_state, inst.uuid,
                                     None if len(srv_states.MACHINE.transition(event).targets)
                                     == 1 else inst.vm_state)
        except InvalidTransition:
            raise InstanceInvalidState(
                f"Cannot '{event}' instance {inst.uuid} while it is in vm_state "
                f"{inst.vm_state}.") from None

    def _set_task(self, c: Tx, inst: InstanceRecord, task_state: str,
                  **values: Any) -> None:
        """Take the server for a task; a task started concurrently wins."""
        if not INSTANCES.update(c, inst.uuid, {"task_state": task_state, **values},
                                {"task_state": inst.task_state}):
            raise InstanceInvalidState(f"Instance {inst.uuid} changed task state "
                                       "concurrently; retry the request.")

    def delete_server(self, ctx: RequestContext, server_id: str) -> None:
        with self.db.begin() as c:
            inst = self._server(c, ctx, server_id, "server:delete")
            self._check_unlocked(ctx, inst)
            if inst.task_state == "deleting":
                return
            host = None if inst.host is None else self._check_host_up(inst)
            INSTANCES.update(c, inst.uuid, {"task_state": "deleting"})
        action = self.ops.start_action(ctx, server_id, "delete")
        if host is None:
            self._local_delete(inst, action)
        else:
            self.rpcapi.terminate_instance(ctx, host, server_id, action.id)

    def _local_delete(self, inst: InstanceRecord, action: ActionRef) -> None:
        """A server without a host (shelved-offloaded) has no guest and no host
        connection to undo: its volumes are released from here and the
        server is gone when the request returns (Nova's local delete).  Files
        a former host kept for it (an image's root disk overlay) go at that
        host's next start."""
        with self.db.begin() as c:
            bdms = self._bdms(c, inst.uuid)
        failed = release_volumes(self.db, self.volumes, self.ops, action, bdms)
        now = models.utcnow()
        with self.db.begin() as c:
            INSTANCES.update(c, inst.uuid, {
                "vm_state": srv_states.DELETED, "task_state": None, "deleted": True,
                "deleted_at": now, "power_state": srv_states.POWER_NOSTATE})
        self.ops.finish_action(action, "Error" if failed else None)

    def power_action(self, ctx: RequestContext, server_id: str, event: str) -> None:
        """``stop`` or ``start``."""
        with self.db.begin() as c:
            inst = self._server(c, ctx, server_id, f"server:{event}")
            self._check_unlocked(ctx, inst)
            host = self._check_host_up(inst)
            self._check_state(inst, event)
            if inst.task_state is not None:
                raise InstanceInvalidState(f"Cannot '{event}' instance {server_id} while it "
                                           f"is in task_state {inst.task_state}.")
            self._set_task(c, inst, "powering-off" if event == "stop" else "powering-on")
        action = self.ops.start_action(ctx, server_id, event)
        self.rpcapi.power_action(ctx, host, server_id, event, action.id)

    def shelve_action(self, ctx: RequestContext, server_id: str, event: str) -> None:
        """``shelve``, ``shelve_offload`` or ``unshelve`` (an offloaded server
        is unshelved on the least busy live host)."""
        with self.db.begin() as c:
            inst = self._server(c, ctx, server_id, f"server:{event}")
            self._check_unlocked(ctx, inst)
            self._check_state(inst, event)
            if inst.task_state is not None:
                raise InstanceInvalidState(f"Cannot '{event}' instance {server_id} while it "
                                           f"is in task_state {inst.task_state}.")
            if inst.host is None:
                inst = dataclasses.replace(inst, host=self._pick_host())
            host = self._check_host_up(inst)
            self._set_task(c, inst, {"shelve": "shelving",
                                     "shelve_offload": "shelving_offloading",
                                     "unshelve": "unshelving"}[event], host=host)
        action = self.ops.start_action(ctx, server_id, event)
        self.rpcapi.shelve_action(ctx, host, server_id, event, action.id)

    def lock(self, ctx: RequestContext, server_id: str, locked: bool) -> None:
        with self.db.begin() as c:
            inst = self._server(c, ctx, server_id, "server:lock" if locked else "server:unlock")
            if not locked and inst.locked and inst.locked_by == "admin" and not ctx.is_admin:
                raise InstanceLocked(server_id)
            INSTANCES.update(c, inst.uuid, {
                "locked": locked,
                "locked_by": ("admin" if ctx.is_admin else "owner") if locked else None})
        self.ops.finish_action(self.ops.start_action(ctx, server_id,
                                                     "lock" if locked else "unlock"))

    # -- volume attachments ----------------------------------------------------

    @staticmethod
    def _bdms(c: Tx, server_id: str) -> list[BdmRecord]:
        """The server's live block device mappings (root disk included)."""
        return BDMS.all(c, _SERVER_BDMS, {"server_id": server_id})

    def _bdm(self, c: Tx, server_id: str, volume_id: str) -> BdmRecord | None:
        return next((b for b in self._bdms(c, server_id) if b.volume_id == volume_id), None)

    def get_volume_attachment(self, ctx: RequestContext, server_id: str, volume_id: str
                              ) -> BdmRecord:
        with self.db.begin() as c:
            self._server(c, ctx, server_id, "server:volume_attachments:show")
            bdm = self._bdm(c, server_id, volume_id)
        if bdm is None:
            raise VolumeNotAttached(server_id, volume_id)
        return bdm

    def set_delete_on_termination(self, ctx: RequestContext, server_id: str, volume_id: str,
                                  delete_on_termination: bool) -> BdmRecord:
        """Microversion 2.85: whether deleting the server deletes the volume."""
        with self.db.begin() as c:
            self._server(c, ctx, server_id, "server:volume_attachments:update")
            bdm = self._bdm(c, server_id, volume_id)
            if bdm is None:
                raise VolumeNotAttached(server_id, volume_id)
            BDMS.update(c, bdm.id, {"delete_on_termination": delete_on_termination,
                                    "updated_at": models.utcnow()})
        return dataclasses.replace(bdm, delete_on_termination=delete_on_termination)

    def list_volume_attachments(self, ctx: RequestContext, server_id: str
                                ) -> list[BdmRecord]:
        with self.db.begin() as c:
            self._server(c, ctx, server_id, "server:volume_attachments:index")
            return [b for b in self._bdms(c, server_id) if b.volume_id is not None]

    def _volume(self, ctx: RequestContext, volume_id: str) -> VolumeRef:
        vol = self.volumes.get_volume(volume_id)
        if not policy.allowed(ctx, "volume:get", vol.project_id):
            raise VolumeNotFound(volume_id)  # another project's volume does not exist for you
        return vol

    def attach_volume(self, ctx: RequestContext, server_id: str, volume_id: str,
                      device: str | None, tag: str | None, delete_on_termination: bool,
                      allow_multiattach: bool) -> BdmRecord:
        started = models.utcnow()
        with self.db.begin() as c:
            inst = self._server(c, ctx, server_id, "server:volume_attachments:create")
            self._check_unlocked(ctx, inst)
            self._check_state(inst, "attach_volume")
            if inst.vm_state in srv_states.SHELVED_STATES:
                raise InstanceInvalidState(f"Attaching a volume to shelved server {server_id} "
                                           "is not supported yet.")
            host = self._check_host_up(inst)
            bdms = self._bdms(c, server_id)
        if any(b.volume_id == volume_id for b in bdms):
            raise InvalidVolume(f"Volume {volume_id} is already attached to instance "
                                f"{server_id}.")
        vol = self._volume(ctx, volume_id)
        if vol.multiattach and not allow_multiattach:
            raise InvalidInput("Multiattach volumes are only supported starting with compute "
                               "API version 2.60.")
        bus, name = self._device(device, [b.device_name for b in bdms],
                                 self._image_bus(inst.image_ref))
        attachment = self.volumes.attachment_create(volume_id, server_id)  # reserves
        bdm: BdmRecord | None = None
        try:
            with self.db.begin() as c:
                bdm = BDMS.insert(c, {
                    "uuid": str(uuid.uuid4()), "instance_uuid": server_id,
                    "volume_id": volume_id, "attachment_id": attachment.id,
                    "device_name": name, "disk_bus": bus, "boot_index": None,
                    "source_type": "volume", "destination_type": "volume", "tag": tag,
                    "delete_on_termination": delete_on_termination,
                    "created_at": models.utcnow(), "deleted": False})
            action = self.ops.start_action(ctx, server_id, "attach_volume", volume_id,
                                           done_step="a1:compute_api", started=started)
            self.rpcapi.attach_volume(ctx, host, server_id, bdm.uuid, action.id,
                                      _shared_target(vol))
        except Exception:
            self.volumes.attachment_delete(attachment.id)
            if bdm is not None:
                with self.db.begin() as c:
                    c.execute(delete(BDMS.table).where(BDMS.pk == bdm.id))
            raise
        return bdm

    def _image_bus(self, image_ref: str | None) -> str | None:
        """The server's image's ``hw_disk_bus`` property, if it has one."""
        if image_ref is None or self.images is None or not is_image_id(image_ref):
            return None
        return self.images.boot_source(image_ref).disk_bus

    def _device(self, requested: str | None, used: list[str | None],
                image_bus: str | None = None) -> tuple[str, str]:
        """Bus and device name: the requested prefix picks the bus (sd: virtio-scsi,
        vd: virtio-blk); without one the image's hw_disk_bus, else [compute]
        disk_bus; the name is the first free one on that bus."""
        bus = image_bus or self.default_bus
        if requested:
            m = _DEVICE_RE.match(requested)
            if m is None:
                raise InvalidInput(f"The supplied device path ({requested}) is invalid: "
                                   "expected /dev/sdX or /dev/vdX.")
            bus = "scsi" if m.group(1) == "sd" else "virtio"
        prefix = "sd" if bus == "scsi" else "vd"
        taken = {u for u in used if u}
        for letter in "bcdefghijklmnopqrstuvwxyz":
            name = f"/dev/{prefix}{letter}"
            if name not in taken:
                return bus, name
        raise InvalidInput("The server has no free device name left for another volume.")

    def detach_volume(self, ctx: RequestContext, server_id: str, volume_id: str,
                      allow_shelved: bool) -> None:
        """Spec step 0 and s1, in the spec's order: policy, server, shelved,
        volume, BDM, root device; then (s1) lock, state and host checks,
        begin_detaching, the action, the cast."""
        with self.db.begin() as c:  # read once; the errors still come in spec order
            inst = self._server(c, ctx, server_id, "server:volume_attachments:delete")
            bdm = self._bdm(c, server_id, volume_id)
        if inst.vm_state in srv_states.SHELVED_STATES and not allow_shelved:
            raise InstanceInvalidState(
                f"Cannot 'detach_volume' instance {server_id} while it is in vm_state "
                f"{inst.vm_state}: detaching from a shelved server needs microversion 2.20 "
                "or later.")
        vol = self._volume(ctx, volume_id)  # 404 when the volume does not exist
        if bdm is None:
            raise VolumeNotAttached(server_id, volume_id)
        if bdm.boot_index == 0:
            raise InvalidVolume("Cannot detach a root device volume.")
        self._check_unlocked(ctx, inst)
        self._check_state(inst, "detach_volume")
        if inst.vm_state == srv_states.SHELVED_OFFLOADED:
            self._detach_offloaded(ctx, server_id, volume_id, vol, bdm)
            return
        host = self._check_host_up(inst)
        started = models.utcnow()
        self.volumes.begin_detaching(volume_id)  # in-use -> detaching, or 400
        action = self.ops.start_action(ctx, server_id, "detach_volume", volume_id)
        try:
            with self.ops.step(action, "s1:compute_api", started=started):
                self.rpcapi.detach_volume(ctx, host, server_id, volume_id, bdm.attachment_id,
                                          action.id, _shared_target(vol))
        except Exception:
            self.volumes.roll_detaching(volume_id)
            self.ops.finish_action(action, "Error")
            raise

    def _detach_offloaded(self, ctx: RequestContext, server_id: str, volume_id: str,
                          vol: VolumeRef, bdm: BdmRecord) -> None:
        """s1 for a server without a host: no hypervisor work at all, the
        storage side and the BDM only, here in the API."""
        started = models.utcnow()
        action = self.ops.start_action(ctx, server_id, "detach_volume", volume_id)
        with self.ops.step(action, "s1:compute_api", started=started):
            if vol.status == "in-use":
                self.volumes.begin_detaching(volume_id)
        with self.ops.step(action, "s1.2+s1.3:attachment_delete"):
            if bdm.attachment_id is not None:
                self.volumes.attachment_delete(bdm.attachment_id)
            with self.db.begin() as c:
                now = models.utcnow()
                BDMS.update(c, bdm.id, {"deleted": True, "deleted_at": now})
        self.ops.finish_action(action)

    # -- instance actions ----------------------------------------------------

    def list_actions(self, ctx: RequestContext, server_id: str, read_deleted: bool = False
                     ) -> list[models.InstanceAction]:
        """``read_deleted``: a deleted server's too (microversion 2.21)."""
        with self.db.begin() as c:
            self._server(c, ctx, server_id, "server:instance_actions", read_deleted)
        with self.db.session() as s:
            rows = list(s.scalars(select(models.InstanceAction).where(
                models.InstanceAction.instance_uuid == server_id).order_by(
                models.InstanceAction.start_time.desc(), models.InstanceAction.id.desc())).all())
            for r in rows:
                s.expunge(r)
            return rows

    def get_action(self, ctx: RequestContext, server_id: str, request_id: str,
                   read_deleted: bool = False) -> ActionView:
        with self.db.begin() as c:
            self._server(c, ctx, server_id, "server:instance_actions", read_deleted)
        with self.db.session() as s:
            action = s.scalars(select(models.InstanceAction).where(
                models.InstanceAction.instance_uuid == server_id,
                models.InstanceAction.request_id == request_id).order_by(
                models.InstanceAction.id.desc())).first()
            if action is None:
                raise ActionNotFound(server_id, request_id)
            events = list(s.scalars(select(models.InstanceActionEvent).where(
                models.InstanceActionEvent.action_id == action.id).order_by(
                models.InstanceActionEvent.id)).all())
            s.expunge(action)
            for e in events:
                s.expunge(e)
            return ActionView(action, events)


def _shared_target(vol: VolumeRef) -> str | None:
    """The host-wide lock name for volumes whose backend shares targets."""
    return vol.service_uuid if vol.shared_targets and vol.service_uuid else None
