"""The narrow interface between the compute service and a hypervisor.

Values crossing it are frozen dataclasses; drivers never mutate their inputs.
Implementations: ``libvirt`` (real, ``qemu:///system``) and ``fake`` (memory).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal, Protocol

DiskBus = Literal["scsi", "virtio"]

NAME_PREFIX = "tether-"
"""How Tether names what it makes in the hypervisor: domain ``tether-<server
uuid>``, CHAP secret usage ``tether-volume-<volume id>``.  ``[compute]
domain_prefix`` changes it, for two deployments sharing one libvirtd (the
audit counts every name with the prefix as its own)."""


class PowerState(enum.Enum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    NOSTATE = "nostate"

    @property
    def is_live(self) -> bool:
        """A live guest has a running QEMU whose devices must be unplugged."""
        return self in (PowerState.RUNNING, PowerState.PAUSED)


@dataclass(frozen=True)
class NetworkDiskSource:
    """An iSCSI LUN reached by QEMU's own initiator (connector ``iscsi-direct``)."""

    target_iqn: str
    lun: int
    host: str
    port: int
    initiator_iqn: str
    auth_username: str | None = None
    secret_uuid: str | None = None  # libvirt secret holding the CHAP password


@dataclass(frozen=True)
class BlockDiskSource:
    """A host block device (connector ``iscsi`` through the host initiator)."""

    path: str


DiskSource = NetworkDiskSource | BlockDiskSource


def disk_alias(volume_id: str) -> str:
    """Libvirt user alias that finds a volume's disk by volume, not device name."""
    return f"ua-{volume_id}"


@dataclass(frozen=True)
class DiskSpec:
    volume_id: str
    target_dev: str  # "sdb", "vdc" ...
    bus: DiskBus
    source: DiskSource
    cache: str = "none"

    @property
    def alias(self) -> str:
        return disk_alias(self.volume_id)


@dataclass(frozen=True)
class AttachedDisk:
    """A disk as the hypervisor reports it."""

    target_dev: str
    bus: str
    alias: str | None
    serial: str | None
    source: str  # "iscsi://host:port/iqn/lun" or a path

    @property
    def volume_id(self) -> str | None:
        if self.alias and self.alias.startswith("ua-"):
            return self.alias[3:]
        return None


@dataclass(frozen=True)
class ServerSpec:
    uuid: str
    name: str  # libvirt domain name
    vcpus: int
    memory_mib: int
    root_disk: str | None = None  # qcow2 file the guest boots from (an OS image's overlay)
    root_volume: DiskSpec | None = None  # a volume the guest boots from
    kernel: str | None = None  # direct kernel boot (a real Linux guest)
    initrd: str | None = None
    cmdline: str | None = None
    console_log: str | None = None
    # a second serial port as a unix socket QEMU listens on (a guest agent's line)
    agent_socket: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def boots_os(self) -> bool:
        return bool(self.root_disk or self.kernel or self.root_volume)


class VirtError(Exception):
    """Base of the errors a virt driver raises."""


class InstanceNotFound(VirtError):
    def __init__(self, server_uuid: str) -> None:
        super().__init__(f"Instance {server_uuid} could not be found on this hypervisor.")
        self.server_uuid = server_uuid


class DiskNotFound(VirtError):
    def __init__(self, server_uuid: str, volume_id: str) -> None:
        super().__init__(f"No disk for volume {volume_id} in instance {server_uuid}.")
        self.server_uuid = server_uuid
        self.volume_id = volume_id


class DeviceDetachFailed(VirtError):
    def __init__(self, server_uuid: str, volume_id: str, reason: str) -> None:
        super().__init__(
            f"Device detach failed for volume {volume_id} on instance {server_uuid}: {reason}"
        )
        self.server_uuid = server_uuid
        self.volume_id = volume_id
        self.reason = reason


class VirtDriver(Protocol):
    def spawn(self, spec: ServerSpec) -> None:
        """Define and start a guest; idempotent for an existing, same-uuid guest."""
        ...

    def destroy(self, server_uuid: str) -> None:
        """Stop and undefine the guest; no-op if it does not exist."""
        ...

    def power_on(self, server_uuid: str) -> None: ...

    def power_off(self, server_uuid: str) -> None: ...

    def power_state(self, server_uuid: str) -> PowerState:
        """Raises InstanceNotFound."""
        ...

    def attach_disk(self, server_uuid: str, disk: DiskSpec) -> None:
        """Attach to the persistent definition and, when live, the running guest."""
        ...

    def detach_disk(
        self, server_uuid: str, volume_id: str, *, timeout: float, attempts: int
    ) -> None:
        """Remove the volume's disk from the persistent definition and, when
        live, from the running guest, waiting for the device-removed event.

        Raises InstanceNotFound, DiskNotFound, DeviceDetachFailed.
        """
        ...

    def list_disks(self, server_uuid: str, *, live: bool = True) -> list[AttachedDisk]: ...

    def define_chap_secret(self, volume_id: str, username: str, password: str) -> str:
        """Store a CHAP password for QEMU; returns the secret's uuid. Idempotent."""
        ...

    def undefine_chap_secret(self, volume_id: str) -> None:
        """No-op if absent."""
        ...

    def has_chap_secret(self, volume_id: str) -> bool: ...

    # -- what the hypervisor holds, for ``tether audit`` ---------------------------

    def list_servers(self) -> list[str]:
        """UUIDs of the guests this driver made (libvirt: domains named with
        its prefix), whatever the database says of them."""
        ...

    def chap_secrets(self) -> set[str]:
        """Volume ids that have a CHAP secret stored for QEMU."""
        ...
