"""An in-memory hypervisor for unit tests: guests, their persistent and live
disks, CHAP secrets; and the failures the detach flow must survive."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from tether.virt.driver import (
    AttachedDisk,
    DeviceDetachFailed,
    DiskNotFound,
    DiskSpec,
    InstanceNotFound,
    PowerState,
    ServerSpec,
    VirtError,
)


@dataclass
class FakeGuest:
    spec: ServerSpec
    state: PowerState = PowerState.RUNNING
    persistent: dict[str, DiskSpec] = field(default_factory=dict)
    live: dict[str, DiskSpec] = field(default_factory=dict)


class FakeDriver:
    def __init__(self) -> None:
        self.guests: dict[str, FakeGuest] = {}
        self.secrets: dict[str, tuple[str, str, str]] = {}  # volume -> (uuid, user, pw)
        self.refuse_unplug: set[str] = set()  # volume ids whose live disk never goes
        self.fail_attach: set[str] = set()  # volume ids whose attach fails
        self.detach_attempts: dict[str, int] = {}
        self._lock = threading.Lock()

    def _guest(self, server_uuid: str) -> FakeGuest:
        guest = self.guests.get(server_uuid)
        if guest is None:
            raise InstanceNotFound(server_uuid)
        return guest

    def spawn(self, spec: ServerSpec) -> None:
        with self._lock:
            guest = self.guests.setdefault(spec.uuid, FakeGuest(spec))
            if spec.root_volume is not None:
                guest.persistent[spec.root_volume.volume_id] = spec.root_volume
                guest.live[spec.root_volume.volume_id] = spec.root_volume

    def destroy(self, server_uuid: str) -> None:
        with self._lock:
            self.guests.pop(server_uuid, None)

    def power_on(self, server_uuid: str) -> None:
        with self._lock:
            guest = self._guest(server_uuid)
            guest.state = PowerState.RUNNING
            guest.live = dict(guest.persistent)

    def power_off(self, server_uuid: str) -> None:
        with self._lock:
            guest = self._guest(server_uuid)
            guest.state = PowerState.SHUTOFF
            guest.live = {}

    def power_state(self, server_uuid: str) -> PowerState:
        with self._lock:
            return self._guest(server_uuid).state

    def attach_disk(self, server_uuid: str, disk: DiskSpec) -> None:
        with self._lock:
            guest = self._guest(server_uuid)
            if disk.volume_id in self.fail_attach:
                raise VirtError(f"fake attach failure for volume {disk.volume_id}")
            guest.persistent[disk.volume_id] = disk
            if guest.state.is_live:
                guest.live[disk.volume_id] = disk

    def detach_disk(self, server_uuid: str, volume_id: str, *, timeout: float,
                    attempts: int) -> None:
        with self._lock:
            guest = self._guest(server_uuid)
            if volume_id not in guest.persistent and volume_id not in guest.live:
                raise DiskNotFound(server_uuid, volume_id)
            self.detach_attempts[volume_id] = attempts
            if guest.state.is_live and volume_id in self.refuse_unplug:
                raise DeviceDetachFailed(server_uuid, volume_id,
                                         f"guest did not release the disk after {attempts} "
                                         f"attempt(s) of {timeout:.1f}s")
            guest.persistent.pop(volume_id, None)
            guest.live.pop(volume_id, None)

    def list_disks(self, server_uuid: str, *, live: bool = True) -> list[AttachedDisk]:
        with self._lock:
            guest = self._guest(server_uuid)
            disks = guest.live if live else guest.persistent
            return [AttachedDisk(d.target_dev, d.bus, d.alias, d.volume_id, repr(d.source))
                    for d in disks.values()]

    def define_chap_secret(self, volume_id: str, username: str, password: str) -> str:
        with self._lock:
            existing = self.secrets.get(volume_id)
            secret_uuid = existing[0] if existing else str(uuid.uuid4())
            self.secrets[volume_id] = (secret_uuid, username, password)
            return secret_uuid

    def undefine_chap_secret(self, volume_id: str) -> None:
        with self._lock:
            self.secrets.pop(volume_id, None)

    def has_chap_secret(self, volume_id: str) -> bool:
        return volume_id in self.secrets

    def list_servers(self) -> list[str]:
        with self._lock:
            return sorted(self.guests)

    def chap_secrets(self) -> set[str]:
        with self._lock:
            return set(self.secrets)
