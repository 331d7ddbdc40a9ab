"""A server's volume attachments as the REST API sees them
(``ComputeAPI.attachments``): list, show, update, and the API side of
attach and detach.

Attach.  In one transaction: the server is checked to be idle in a state
that allows it (a guard: a delete that started a moment ago wins), the
device name and the volume are claimed for the server by inserting the
block device mapping (unique indexes: two requests cannot both hold
``/dev/sdb``, nor the volume twice), and the operation is recorded, owned
by this process.  Then block storage reserves the volume (refused: all of
it is removed again, the caller gets storage's answer).  Then the mapping
gets the attachment id and the operation is queued for the host, and cast.

Detach.  The checks in the spec's order; the operation recorded (owned by
this process); ``begin_detaching`` (refused: the record goes); queued; cast.

If this process dies in between, the operation is left ``api`` under a dead
owner and ``tether.compute.recovery`` undoes it with :meth:`undo_attach` /
:meth:`undo_detach`, the same code a failed cast runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import uuid
from typing import TYPE_CHECKING

from tether import faults
from tether.compute.attach import release_reservation
from tether.compute.operations import ActionRef
from tether.compute.repository import DeviceTaken
from tether.compute.volume_client import VolumeRef
from tether.context import RequestContext
from tether.db.api import Tx
from tether.db.models import utcnow
from tether.db.records import ActionRecord, BdmRecord, InstanceRecord
from tether.exceptions import (
    Conflict,
    InstanceInvalidState,
    InvalidInput,
    InvalidVolume,
    QuotaExceeded,
    VolumeNotAttached,
)
from tether.image.registry import is_image_id
from tether.states import operation as op_states
from tether.states import server as srv_states
from tether.states import volume as vol_states

if TYPE_CHECKING:
    from tether.compute.api import ComputeAPI

LOG = logging.getLogger(__name__)
_DEVICE_RE = re.compile(r"^/dev/(sd|vd)([a-z]{1,2})$")
_CLAIM_TRIES = 5


def shared_target(vol: VolumeRef) -> str | None:
    """The host-wide lock name for volumes whose backend shares targets."""
    return vol.service_uuid if vol.shared_targets and vol.service_uuid else None


class VolumeAttachmentAPI:
    def __init__(self, compute: ComputeAPI) -> None:
        self.c = compute
        self.repo = compute.repo
        self.ops = compute.ops
        self.volumes = compute.volumes

    # -- reads and the one update ---------------------------------------------

    def get(self, ctx: RequestContext, server_id: str, volume_id: str) -> BdmRecord:
        with self.repo.begin() as c:
            self.c.server(c, ctx, server_id, "os_compute_api:os-volumes-attachments:show")
            bdm = self.repo.live_bdm(c, server_id, volume_id)
        if bdm is None:
            raise VolumeNotAttached(server_id, volume_id)
        return bdm

    def index(self, ctx: RequestContext, server_id: str) -> list[BdmRecord]:
        with self.repo.begin() as c:
            self.c.server(c, ctx, server_id, "os_compute_api:os-volumes-attachments:index")
            return [b for b in self.repo.live_bdms(c, server_id) if b.volume_id is not None]

    def set_delete_on_termination(self, ctx: RequestContext, server_id: str, volume_id: str,
                                  delete_on_termination: bool) -> BdmRecord:
        """Microversion 2.85: whether deleting the server deletes the volume."""
        with self.repo.begin() as c:
            self.c.server(c, ctx, server_id, "os_compute_api:os-volumes-attachments:update")
            bdm = self.repo.live_bdm(c, server_id, volume_id)
            if bdm is None:
                raise VolumeNotAttached(server_id, volume_id)
            return self.repo.set_bdm(c, bdm, {"delete_on_termination": delete_on_termination})

    # -- attach ----------------------------------------------------------------

    def attach(self, ctx: RequestContext, server_id: str, volume_id: str,
               device: str | None, tag: str | None, delete_on_termination: bool,
               allow_multiattach: bool) -> BdmRecord:
        started = utcnow()
        with self.repo.begin() as c:
            inst = self.c.server(c, ctx, server_id, "os_compute_api:os-volumes-attachments:create")
        self.c.check_unlocked(ctx, inst)
        self.c.allowed(inst, "attach_volume")
        if inst.vm_state in srv_states.SHELVED_STATES:
            raise InstanceInvalidState(f"Attaching a volume to shelved server {server_id} "
                                       "is not supported yet.")
        host = self.c.check_host_up(inst)
        vol = self.c.volume(ctx, volume_id)
        if vol.multiattach and not allow_multiattach:
            raise InvalidInput("Multiattach volumes are only supported starting with compute "
                               "API version 2.60.")
        if device:
            _bus_of(device)  # 400 for a malformed one, before anything is claimed
        image_bus = self._image_bus(inst.image_ref)
        bdm, row = self._claim(ctx, inst, vol, device, tag, delete_on_termination, image_bus,
                               started)
        with self.c.running(row.id):
            faults.point("a1:compute_api:start")
            try:
                attachment = self.volumes.attachment_create(volume_id, server_id)  # reserves
            except Exception:
                with self.repo.begin() as c:  # refused: nothing of the request stays
                    self.repo.drop_action(c, row.id)
                    self.repo.drop_bdm(c, bdm.id)
                raise
            faults.point("a1:compute_api:end")
            with self.repo.begin() as c:
                bdm = self.repo.set_bdm(c, bdm, {"attachment_id": attachment.id})
                row = self.c.queue(c, row, attachment.id)
                self.ops.step_done(c, row.id, "a1:compute_api", started)
        self.c.hand_over(ctx, host, row)
        return bdm

    def _claim(self, ctx: RequestContext, inst: InstanceRecord, vol: VolumeRef,
               device: str | None, tag: str | None, delete_on_termination: bool,
               image_bus: str | None, started: dt.datetime
               ) -> tuple[BdmRecord, ActionRecord]:
        """The mapping (device name and volume claimed) and the operation,
        in one transaction that first takes the server (the guard)."""
        for _ in range(_CLAIM_TRIES):
            try:
                with self.repo.begin() as c:
                    self.c.apply_event(c, inst, "attach_volume")
                    bdms = self.repo.live_bdms(c, inst.uuid)
                    self._check_not_attached(inst.uuid, vol.id, bdms)
                    self._check_disk_count(inst, bdms)
                    bus, name = self._device(device, [b.device_name for b in bdms], image_bus)
                    bdm = self.repo.claim_bdm(c, {
                        "uuid": str(uuid.uuid4()), "instance_uuid": inst.uuid,
                        "volume_id": vol.id, "attachment_id": None, "device_name": name,
                        "disk_bus": bus, "boot_index": None, "source_type": "volume",
                        "destination_type": "volume", "tag": tag,
                        "shared_target": shared_target(vol),
                        "delete_on_termination": delete_on_termination})
                    row = self.ops.new(c, ctx, inst.uuid, "attach_volume",
                                       status=op_states.API, resource_id=vol.id,
                                       args={"bdm": bdm.uuid}, started=started)
                    return bdm, row
            except DeviceTaken:
                if device:
                    raise Conflict(f"Device {device} of server {inst.uuid} was taken by "
                                   "another request; choose another device.") from None
                continue  # another request took the name we picked: pick again
        raise Conflict(f"Could not claim a device of server {inst.uuid} (busy); retry.")

    def _check_disk_count(self, inst: InstanceRecord, bdms: list[BdmRecord]) -> None:
        """Nova's ``max_disk_devices_to_attach``: the server's disks (its
        image's root disk, every live mapping) and this one.  Counted after
        the guard's UPDATE of the server, so two attaches cannot both fit."""
        limit = self.c.max_disk_devices
        disks = len(bdms) + (1 if inst.image_ref is not None else 0)
        if 0 <= limit < disks + 1:
            raise QuotaExceeded(f"The maximum allowed number of disk devices ({limit}) to "
                                f"attach to a single instance has been exceeded: server "
                                f"{inst.uuid} has {disks}. Detach one first.")

    @staticmethod
    def _check_not_attached(server_id: str, volume_id: str, bdms: list[BdmRecord]) -> None:
        bdm = next((b for b in bdms if b.volume_id == volume_id), None)
        if bdm is None:
            return
        if bdm.connection_info is None and bdm.boot_index != 0:
            raise Conflict(f"Volume {volume_id} is being attached to instance {server_id} "
                           "by another request.")
        raise InvalidVolume(f"Volume {volume_id} is already attached to instance "
                            f"{server_id}.")

    def _image_bus(self, image_ref: str | None) -> str | None:
        """The server's image's ``hw_disk_bus`` property, if it has one."""
        if image_ref is None or self.c.images is None or not is_image_id(image_ref):
            return None
        return self.c.images.boot_source(image_ref).disk_bus

    def _device(self, requested: str | None, used: list[str | None],
                image_bus: str | None = None) -> tuple[str, str]:
        """Bus and device name: the requested prefix picks the bus (sd: virtio-scsi,
        vd: virtio-blk); without one the image's hw_disk_bus, else [compute]
        disk_bus; the name is the first free one on that bus (a requested
        one that is taken: 409)."""
        bus = image_bus or self.c.default_bus
        taken = {u for u in used if u}
        if requested:
            if requested in taken:
                raise Conflict(f"Device {requested} is in use on this server; choose "
                               "another, or leave the device out.")
            bus = _bus_of(requested)
        prefix = "sd" if bus == "scsi" else "vd"
        for letter in "bcdefghijklmnopqrstuvwxyz":
            name = f"/dev/{prefix}{letter}"
            if name not in taken:
                return bus, name
        raise InvalidInput("The server has no free device name left for another volume.")

    def undo_attach(self, row: ActionRecord) -> None:
        """An attach interrupted before its host had it: storage's
        reservation and the mapping go, the operation ends in error."""
        bdm_uuid = (row.args or {}).get("bdm")
        with self.repo.begin() as c:
            bdm = self.repo.bdm(c, bdm_uuid) if bdm_uuid else None
        if bdm is not None and not bdm.deleted:
            release_reservation(self.repo, self.volumes, row.instance_uuid, bdm)

        def last(c: Tx) -> None:
            if bdm is not None and not bdm.deleted:
                self.repo.release_bdm(c, bdm)

        self.ops.finish_action(ActionRef.of(row), "Error", last=last)

    # -- detach ----------------------------------------------------------------

    def detach(self, ctx: RequestContext, server_id: str, volume_id: str,
               allow_shelved: bool) -> None:
        """Spec step 0 and s1, in the spec's order: policy, server, shelved,
        volume, BDM, root device; then (s1) lock, state and host checks, the
        operation, begin_detaching, the cast."""
        started = utcnow()
        with self.repo.begin() as c:  # read once; the errors still come in spec order
            inst = self.c.server(c, ctx, server_id, "os_compute_api:os-volumes-attachments:delete")
            bdm = self.repo.live_bdm(c, server_id, volume_id)
        if inst.vm_state in srv_states.SHELVED_STATES and not allow_shelved:
            raise InstanceInvalidState(
                f"Cannot 'detach_volume' instance {server_id} while it is in vm_state "
                f"{inst.vm_state}: detaching from a shelved server needs microversion 2.20 "
                "or later.")
        vol = self.c.volume(ctx, volume_id)  # 404 when the volume does not exist
        if bdm is None:
            raise VolumeNotAttached(server_id, volume_id)
        if bdm.boot_index == 0:
            raise InvalidVolume("Cannot detach a root device volume.")
        self.c.check_unlocked(ctx, inst)
        self.c.allowed(inst, "detach_volume")
        offloaded = inst.vm_state == srv_states.SHELVED_OFFLOADED
        host = None if offloaded else self.c.check_host_up(inst)
        with self.repo.begin() as c:
            self.c.apply_event(c, inst, "detach_volume")
            row = self.ops.new(c, ctx, server_id, "detach_volume", status=op_states.API,
                               resource_id=volume_id, started=started,
                               args={"bdm": bdm.uuid, "attachment": bdm.attachment_id,
                                     "offloaded": offloaded})
        with self.c.running(row.id):
            if offloaded:
                with self.repo.begin() as c:
                    self.ops.step_done(c, row.id, "s1:compute_api", started)
                self._detach_offloaded(row, vol)
                return
            faults.point("s1:compute_api:start")
            try:
                self.volumes.begin_detaching(volume_id)  # in-use -> detaching, or 400
            except Exception:
                with self.repo.begin() as c:
                    self.repo.drop_action(c, row.id)
                raise
            faults.point("s1:compute_api:end")
            with self.repo.begin() as c:
                row = self.c.queue(c, row, None)
                self.ops.step_done(c, row.id, "s1:compute_api", started)
        assert host is not None
        self.c.hand_over(ctx, host, row)

    def _detach_offloaded(self, row: ActionRecord, vol: VolumeRef | None) -> None:
        """s1 for a server without a host: no hypervisor work at all, the
        storage side and the mapping only, here in the API.  Idempotent (a
        recovery runs it again)."""
        action = ActionRef.of(row)
        args = row.args or {}
        with self.repo.begin() as c:
            bdm = self.repo.bdm(c, args["bdm"])
        if bdm is None:
            self.ops.finish_action(action)
            return
        if vol is None:
            vol = self.volumes.get_volume(row.resource_id or "")
        if vol.status == vol_states.IN_USE and not bdm.deleted:
            self.volumes.begin_detaching(vol.id)

        def release(c: Tx) -> None:
            if not bdm.deleted:
                self.repo.release_bdm(c, bdm)

        with self.ops.step(action, "s1.2+s1.3:attachment_delete", first=release):
            if bdm.attachment_id is not None:
                self.volumes.attachment_delete(bdm.attachment_id)
        self.ops.finish_action(action)

    def undo_detach(self, row: ActionRecord) -> None:
        """A detach interrupted before its host had it: the volume goes back
        to in-use.  From a server without a host the detach is all here:
        finished instead."""
        if (row.args or {}).get("offloaded"):
            self._detach_offloaded(row, None)
            return
        if row.resource_id:
            vol = self.volumes.get_volume(row.resource_id)
            if vol.status == vol_states.DETACHING:
                self.volumes.roll_detaching(vol.id)
        self.ops.finish_action(ActionRef.of(row), "Error")


def _bus_of(device: str) -> str:
    m = _DEVICE_RE.match(device)
    if m is None:
        raise InvalidInput(f"The supplied device path ({device}) is invalid: expected "
                           "/dev/sdX or /dev/vdX.")
    return "scsi" if m.group(1) == "sd" else "virtio"
