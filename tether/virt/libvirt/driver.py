"""The libvirt driver (libvirt-python, ``qemu:///system`` by default).

Detach (the spec's s1.1.1) is the heart of it:

1. find the volume's disk by its user alias ``ua-<volume_id>`` in the live
   and persistent definitions (neither → DiskNotFound);
2. remove it from the persistent definition (once, no retry);
3. when the guest is live: ask for the unplug and wait for libvirt's
   DEVICE_REMOVED event (DEVICE_REMOVAL_FAILED → fail at once), up to
   ``timeout`` seconds, then check the live XML — the call's own return value
   is never trusted (libvirt even reports success for a virtio-blk disk that
   a guest without an OS never releases); retry up to ``attempts`` times;
4. if the guest never lets go, the disk goes back into the persistent
   definition so both agree the disk is still there → DeviceDetachFailed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import libvirt

from tether.virt.driver import (
    NAME_PREFIX,
    AttachedDisk,
    DeviceDetachFailed,
    DiskNotFound,
    DiskSpec,
    InstanceNotFound,
    PowerState,
    ServerSpec,
    VirtError,
    disk_alias,
)
from tether.virt.libvirt import xml
from tether.virt.libvirt.events import DeviceEvents, Outcome, ensure_event_loop

LOG = logging.getLogger(__name__)

LIVE = libvirt.VIR_DOMAIN_AFFECT_LIVE
CONFIG = libvirt.VIR_DOMAIN_AFFECT_CONFIG

_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
}


def _code(exc: libvirt.libvirtError) -> int:
    code: int = exc.get_error_code()
    return code


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def kvm_runs_os(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether KVM here can boot an operating system: only with hardware
    virtualisation (vmx / svm).  Without it /dev/kvm is a software-nested
    hypervisor (kvm_pvm) that runs guests without an OS but hangs in a
    Linux kernel's decompressor."""
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[-1].split()
                    return "vmx" in flags or "svm" in flags
    except OSError:
        return False
    return False


class LibvirtDriver:
    def __init__(self, uri: str = "qemu:///system", virt_type: str = "auto",
                 domain_prefix: str = NAME_PREFIX,
                 connect: Callable[[str], Any] | None = None) -> None:
        self.uri = uri
        self.virt_type = virt_type
        self.domain_prefix = domain_prefix
        self._connect = connect or libvirt.open
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        self.events = DeviceEvents()
        self._kvm_runs_os = kvm_runs_os

    # -- connection --------------------------------------------------------------

    def conn(self) -> Any:
        with self._conn_lock:
            if self._conn is None or not self._alive(self._conn):
                if self._connect is libvirt.open:
                    ensure_event_loop()
                conn = self._connect(self.uri)
                self.events.register(conn)
                self._conn = conn
            return self._conn

    @staticmethod
    def _alive(conn: Any) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _domain(self, server_uuid: str) -> Any:
        try:
            return self.conn().lookupByUUIDString(server_uuid)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                raise InstanceNotFound(server_uuid) from None
            raise VirtError(f"libvirt lookup of {server_uuid} failed: {exc}") from exc

    def domain_type(self, spec: ServerSpec) -> str:
        """``[compute] virt_type`` when set; for ``auto``, KVM where it can run
        the guest: a guest without an OS wherever /dev/kvm is usable, one that
        boots an OS (a kernel, a disk image, a volume) only where the CPU has
        hardware virtualisation; plain QEMU emulation (TCG) otherwise."""
        if self.virt_type != "auto":
            return self.virt_type
        if not kvm_usable():
            return "qemu"
        if spec.boots_os and not self._kvm_runs_os():
            return "qemu"
        return "kvm"

    # -- servers -----------------------------------------------------------------

    def spawn(self, spec: ServerSpec) -> None:
        kind = self.domain_type(spec)
        try:
            dom = self._domain(spec.uuid)
        except InstanceNotFound:
            dom = self.conn().defineXML(xml.domain_xml(spec, kind))
        if dom.isActive():
            return
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            if not (self.virt_type == "auto" and kind == "kvm" and "kvm" in str(exc).lower()):
                raise VirtError(f"starting guest {spec.name} failed: {exc}") from exc
            # QEMU (as its own user) could not use /dev/kvm: plain emulation works
            LOG.warning("KVM unusable for %s (%s); using QEMU emulation", spec.name, exc)
            kind = "qemu"
            dom = self.conn().defineXML(xml.domain_xml(spec, kind))
            dom.create()
        LOG.info("guest %s running (%s)", spec.name, kind)

    def destroy(self, server_uuid: str) -> None:
        try:
            dom = self._domain(server_uuid)
        except InstanceNotFound:
            return
        try:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        except libvirt.libvirtError as exc:
            if _code(exc) != libvirt.VIR_ERR_NO_DOMAIN:
                raise VirtError(f"destroying {server_uuid} failed: {exc}") from exc

    def power_on(self, server_uuid: str) -> None:
        dom = self._domain(server_uuid)
        if not dom.isActive():
            dom.create()

    def power_off(self, server_uuid: str) -> None:
        dom = self._domain(server_uuid)
        if dom.isActive():
            dom.destroy()

    def power_state(self, server_uuid: str) -> PowerState:
        state, _reason = self._domain(server_uuid).state()
        return _STATES.get(state, PowerState.NOSTATE)

    # -- disks -------------------------------------------------------------------

    def attach_disk(self, server_uuid: str, disk: DiskSpec) -> None:
        """Persistent first, then live; a failed live attach undoes the persistent
        one.  A disk already there (by its alias: libvirt refuses it) is left
        as it is: an attach or an unshelve a crash interrupted runs this
        again.  The definitions are read only when libvirt refuses."""
        dom = self._domain(server_uuid)
        device = xml.disk_xml(disk)
        try:
            dom.attachDeviceFlags(device, CONFIG)
        except libvirt.libvirtError as exc:
            if xml.find_disk_xml(self._xml(dom, inactive=True), disk.alias) is None:
                raise VirtError(f"attaching volume {disk.volume_id} to the definition of "
                                f"{server_uuid} failed: {exc}") from exc
            LOG.info("volume %s is in the definition of %s already", disk.volume_id,
                     server_uuid)
        if not dom.isActive():
            return
        try:
            dom.attachDeviceFlags(device, LIVE)
        except libvirt.libvirtError as exc:
            if self._live_has(dom, disk.alias):
                LOG.info("volume %s is in running guest %s already", disk.volume_id,
                         server_uuid)
                return
            try:
                dom.detachDeviceFlags(device, CONFIG)
            except libvirt.libvirtError:
                LOG.exception("could not undo the persistent attach of %s", disk.volume_id)
            raise VirtError(f"attaching volume {disk.volume_id} to running guest "
                            f"{server_uuid} failed: {exc}") from exc

    def detach_disk(self, server_uuid: str, volume_id: str, *, timeout: float,
                    attempts: int) -> None:
        dom = self._domain(server_uuid)
        alias = disk_alias(volume_id)
        live = dom.isActive()
        persistent_xml = xml.find_disk_xml(self._xml(dom, inactive=True), alias)
        live_xml = xml.find_disk_xml(self._xml(dom), alias) if live else None
        if persistent_xml is None and live_xml is None:
            raise DiskNotFound(server_uuid, volume_id)
        if persistent_xml is not None:
            self._detach_persistent(dom, persistent_xml, server_uuid, volume_id)
        if live_xml is None:
            return
        try:
            self._detach_live(dom, server_uuid, volume_id, alias, timeout, attempts)
        except DeviceDetachFailed:
            if persistent_xml is not None:  # keep the definition telling the truth
                try:
                    dom.attachDeviceFlags(persistent_xml, CONFIG)
                except libvirt.libvirtError:
                    LOG.exception("could not restore %s in the definition of %s", alias,
                                  server_uuid)
            raise

    def _detach_persistent(self, dom: Any, device: str, server_uuid: str,
                           volume_id: str) -> None:
        try:
            dom.detachDeviceFlags(device, CONFIG)
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_DOMAIN:
                raise InstanceNotFound(server_uuid) from None
            if _code(exc) != libvirt.VIR_ERR_DEVICE_MISSING:
                raise VirtError(f"detaching volume {volume_id} from the definition of "
                                f"{server_uuid} failed: {exc}") from exc

    def _detach_live(self, dom: Any, server_uuid: str, volume_id: str, alias: str,
                     timeout: float, attempts: int) -> None:
        for attempt in range(1, attempts + 1):
            started = time.monotonic()
            waiter = self.events.expect(server_uuid, alias)
            try:
                dom.detachDeviceAlias(alias, LIVE)
            except libvirt.libvirtError as exc:
                self.events.forget(server_uuid, alias, waiter)
                code = _code(exc)
                if code == libvirt.VIR_ERR_NO_DOMAIN:
                    raise InstanceNotFound(server_uuid) from None
                if code == libvirt.VIR_ERR_DEVICE_MISSING:
                    return  # already gone
                if code == libvirt.VIR_ERR_OPERATION_INVALID and not dom.isActive():
                    return  # the guest stopped: nothing live to unplug
                if "already in the process of unplug" not in str(exc):
                    raise VirtError(f"live detach of volume {volume_id} from {server_uuid} "
                                    f"failed: {exc}") from exc
                waiter = self.events.expect(server_uuid, alias)
            outcome = self.events.wait(waiter, timeout)
            self.events.forget(server_uuid, alias, waiter)
            took = time.monotonic() - started
            if outcome is Outcome.FAILED:
                raise DeviceDetachFailed(server_uuid, volume_id,
                                         "the guest reported the device removal failed")
            if outcome is Outcome.REMOVED or not self._live_has(dom, alias):
                LOG.info("volume %s unplugged from %s on attempt %d in %.3fs", volume_id,
                         server_uuid, attempt, took)
                return
            LOG.warning("volume %s still in guest %s after attempt %d/%d (%.1fs)",
                        volume_id, server_uuid, attempt, attempts, took)
        raise DeviceDetachFailed(server_uuid, volume_id,
                                 f"the guest did not release the disk after {attempts} "
                                 f"attempt(s) of {timeout:g}s")

    def _live_has(self, dom: Any, alias: str) -> bool:
        try:
            return xml.find_disk_xml(self._xml(dom), alias) is not None
        except libvirt.libvirtError:
            return False

    @staticmethod
    def _xml(dom: Any, inactive: bool = False) -> str:
        flags = libvirt.VIR_DOMAIN_XML_INACTIVE if inactive else 0
        text: str = dom.XMLDesc(flags)
        return text

    def list_disks(self, server_uuid: str, *, live: bool = True) -> list[AttachedDisk]:
        dom = self._domain(server_uuid)
        return xml.parse_disks(self._xml(dom, inactive=not live))

    # -- CHAP secrets ------------------------------------------------------------

    def _secret(self, volume_id: str) -> Any:
        try:
            return self.conn().secretLookupByUsage(
                libvirt.VIR_SECRET_USAGE_TYPE_ISCSI,
                xml.secret_usage(volume_id, self.domain_prefix))
        except libvirt.libvirtError as exc:
            if _code(exc) == libvirt.VIR_ERR_NO_SECRET:
                return None
            raise VirtError(f"libvirt secret lookup for volume {volume_id} failed") from exc

    def define_chap_secret(self, volume_id: str, username: str, password: str) -> str:
        secret = self._secret(volume_id)
        if secret is None:
            secret = self.conn().secretDefineXML(xml.secret_xml(volume_id, self.domain_prefix))
        secret.setValue(password.encode())
        secret_uuid: str = secret.UUIDString()
        return secret_uuid

    def undefine_chap_secret(self, volume_id: str) -> None:
        secret = self._secret(volume_id)
        if secret is not None:
            try:
                secret.undefine()
            except libvirt.libvirtError as exc:
                if _code(exc) != libvirt.VIR_ERR_NO_SECRET:
                    raise VirtError(f"removing the secret of volume {volume_id} failed"
                                    ) from exc

    def has_chap_secret(self, volume_id: str) -> bool:
        return self._secret(volume_id) is not None

    # -- what libvirt holds (tether audit) ---------------------------------------

    def list_servers(self) -> list[str]:
        """UUIDs of the domains named ``<prefix><uuid>`` (defined or running)
        whose libvirt UUID is that uuid, as Tether defines them."""
        try:
            domains = self.conn().listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise VirtError(f"listing the domains of {self.uri} failed: {exc}") from exc
        found = []
        for dom in domains:
            try:
                name: str = dom.name()
                dom_uuid: str = dom.UUIDString()
            except libvirt.libvirtError:
                continue  # undefined meanwhile
            server = _uuid_after(name, self.domain_prefix)
            if server is not None and server == dom_uuid:
                found.append(server)
        return sorted(found)

    def chap_secrets(self) -> set[str]:
        """Volumes whose CHAP secret (usage ``<prefix>volume-<id>``) libvirt holds."""
        try:
            secrets = self.conn().listAllSecrets(0)
        except libvirt.libvirtError as exc:
            raise VirtError(f"listing the secrets of {self.uri} failed: {exc}") from exc
        found = set()
        for secret in secrets:
            try:
                if secret.usageType() != libvirt.VIR_SECRET_USAGE_TYPE_ISCSI:
                    continue
                usage: str = secret.usageID()
            except libvirt.libvirtError:
                continue  # undefined meanwhile
            volume_id = xml.volume_of_secret(usage, self.domain_prefix)
            if volume_id is not None:
                found.add(volume_id)
        return found


def _uuid_after(name: str, prefix: str) -> str | None:
    """The uuid a domain name holds after ``prefix`` (None: not such a name)."""
    rest = name[len(prefix):] if name.startswith(prefix) else ""
    try:
        return rest if str(uuid.UUID(rest)) == rest else None
    except ValueError:
        return None
