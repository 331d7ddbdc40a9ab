"""The libvirt driver against real libvirtd/QEMU and a real iSCSI target:
QEMU's own initiator logs in with CHAP; detach waits for the guest."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import wait_for
from tests.integration.daemons import Tgtd
from tether.executor import ProcessRunner
from tether.virt import driver as virt
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.manager import new_chap
from tether.volume.targets.base import ExportSpec
from tether.volume.targets.tgt import TgtTarget

INITIATOR = f"iqn.2010-10.org.tether:test-host-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def driver(libvirtd: None) -> LibvirtDriver:
    return LibvirtDriver()


@pytest.fixture
def guest(driver: LibvirtDriver) -> Iterator[str]:
    server = str(uuid.uuid4())
    driver.spawn(virt.ServerSpec(server, f"tether-test-{server}", 1, 64))
    try:
        yield server
    finally:
        driver.destroy(server)


@pytest.fixture
def volume(tgtd: Tgtd, tmp_path: Any, driver: LibvirtDriver) -> Iterator[dict[str, Any]]:
    """An exported volume and the disk source QEMU needs to reach it."""
    target = TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)
    vid = str(uuid.uuid4())
    path = os.path.join(tmp_path, vid)
    with open(path, "wb") as f:
        f.truncate(64 << 20)
    chap = new_chap()
    loc = target.export(ExportSpec(vid, path, chap, frozenset({INITIATOR})))
    secret = driver.define_chap_secret(vid, chap.username, chap.password)
    source = virt.NetworkDiskSource(loc.target_iqn, loc.target_lun, "127.0.0.1",
                                    tgtd.portal_port, INITIATOR, chap.username, secret)
    try:
        yield {"id": vid, "source": source, "target": target, "iqn": loc.target_iqn}
    finally:
        driver.undefine_chap_secret(vid)
        target.unexport(vid)


def _aliases(driver: LibvirtDriver, server: str, live: bool) -> set[str | None]:
    return {d.alias for d in driver.list_disks(server, live=live)}


def test_attach_and_detach_network_disk(driver: LibvirtDriver, guest: str,
                                        volume: dict[str, Any]) -> None:
    vid, alias = volume["id"], virt.disk_alias(volume["id"])
    t0 = time.perf_counter()
    driver.attach_disk(guest, virt.DiskSpec(vid, "sdb", "scsi", volume["source"]))
    attach_s = time.perf_counter() - t0
    assert alias in _aliases(driver, guest, live=True)
    assert alias in _aliases(driver, guest, live=False)
    assert volume["target"].sessions(vid) == {INITIATOR}  # QEMU logged in

    t0 = time.perf_counter()
    driver.detach_disk(guest, vid, timeout=10, attempts=2)
    detach_s = time.perf_counter() - t0
    print(f"attach {attach_s * 1000:.0f} ms, detach {detach_s * 1000:.0f} ms")
    assert alias not in _aliases(driver, guest, live=True)
    assert alias not in _aliases(driver, guest, live=False)


def test_attach_again_is_harmless(driver: LibvirtDriver, guest: str,
                                  volume: dict[str, Any]) -> None:
    """An attach a crash interrupted runs again: the disk libvirt already has
    (persistent, or both) is left as it is, not an error."""
    vid, alias = volume["id"], virt.disk_alias(volume["id"])
    spec = virt.DiskSpec(vid, "sdb", "scsi", volume["source"])
    driver.attach_disk(guest, spec)
    driver.attach_disk(guest, spec)
    assert [d.alias for d in driver.list_disks(guest, live=True)].count(alias) == 1
    assert [d.alias for d in driver.list_disks(guest, live=False)].count(alias) == 1
    driver.detach_disk(guest, vid, timeout=10, attempts=2)
    assert alias not in _aliases(driver, guest, live=True)
    wait_for(lambda: volume["target"].sessions(vid) == frozenset(), 5,
             "QEMU's iSCSI session to end")


def test_guest_that_never_releases_a_virtio_blk_disk(driver: LibvirtDriver, guest: str,
                                                     volume: dict[str, Any]) -> None:
    """No OS, ACPI on, virtio-blk: the unplug request is never honoured (and
    libvirt's synchronous call would even report success)."""
    vid, alias = volume["id"], virt.disk_alias(volume["id"])
    driver.attach_disk(guest, virt.DiskSpec(vid, "vdb", "virtio", volume["source"]))
    t0 = time.perf_counter()
    with pytest.raises(virt.DeviceDetachFailed, match="did not release"):
        driver.detach_disk(guest, vid, timeout=1.0, attempts=2)
    took = time.perf_counter() - t0
    print(f"refused after {took:.2f}s")
    assert 2.0 <= took < 10
    assert alias in _aliases(driver, guest, live=True)
    assert alias in _aliases(driver, guest, live=False)  # definition restored


def test_missing_disk_and_missing_guest(driver: LibvirtDriver, guest: str) -> None:
    with pytest.raises(virt.DiskNotFound):
        driver.detach_disk(guest, str(uuid.uuid4()), timeout=1, attempts=1)
    with pytest.raises(virt.InstanceNotFound):
        driver.detach_disk(str(uuid.uuid4()), str(uuid.uuid4()), timeout=1, attempts=1)


def test_detach_from_stopped_guest_edits_the_definition(driver: LibvirtDriver, guest: str,
                                                        volume: dict[str, Any]) -> None:
    vid, alias = volume["id"], virt.disk_alias(volume["id"])
    driver.power_off(guest)
    assert driver.power_state(guest) is virt.PowerState.SHUTOFF
    driver.attach_disk(guest, virt.DiskSpec(vid, "sdb", "scsi", volume["source"]))
    assert alias in _aliases(driver, guest, live=False)
    driver.detach_disk(guest, vid, timeout=1, attempts=1)
    assert alias not in _aliases(driver, guest, live=False)


def test_secrets_are_idempotent_and_private(driver: LibvirtDriver,
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    vid = str(uuid.uuid4())
    first = driver.define_chap_secret(vid, "user", "pw-one-0123456789")
    assert driver.define_chap_secret(vid, "user", "pw-two-0123456789") == first
    assert driver.has_chap_secret(vid)
    driver.undefine_chap_secret(vid)
    driver.undefine_chap_secret(vid)
    assert not driver.has_chap_secret(vid)
    assert "pw-one" not in caplog.text and "pw-two" not in caplog.text
