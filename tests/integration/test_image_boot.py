"""A server booted from a local image: the guest really runs the image's
code (a boot sector that writes a marker to the serial console), and volumes
attach to and detach from it like any other."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Tether, wait_for
from tests.integration.daemons import Tgtd
from tether.connectors.iscsi_direct import IscsiDirectConnector
from tether.executor import ProcessRunner
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.targets.tgt import TgtTarget

MARKER = b"TETHER-BOOT-OK"


def boot_sector() -> bytes:
    """x86 real-mode code: print MARKER on COM1, then halt."""
    code = bytes([
        0x31, 0xC0,              # xor ax, ax
        0x8E, 0xD8,              # mov ds, ax
        0xFC,                    # cld
        0xBA, 0xF8, 0x03,        # mov dx, 0x3f8
        0xBE, 0x16, 0x7C,        # mov si, 0x7c16 (the message)
        0xAC,                    # lodsb
        0x84, 0xC0,              # test al, al
        0x74, 0x03,              # jz halt
        0xEE,                    # out dx, al
        0xEB, 0xF8,              # jmp lodsb
        0xF4,                    # halt: hlt
        0xEB, 0xFD,              # jmp halt
    ])
    sector = code + MARKER + b"\r\n\0"
    return sector.ljust(510, b"\0") + b"\x55\xaa"


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
           libvirtd: None) -> Iterator[Tether]:
    # QEMU runs as its own user: its files live where it can reach them
    shared = f"/var/tmp/tether-test-{uuid.uuid4().hex[:8]}"
    images, instances = f"{shared}/images", f"{shared}/instances"
    os.makedirs(images, mode=0o755)
    os.makedirs(instances, mode=0o711)
    with open(os.path.join(images, "bootsector.raw"), "wb") as f:
        f.write(boot_sector().ljust(1 << 20, b"\0"))
    virt = LibvirtDriver()
    t = Tether(str(tmp_path_factory.mktemp("image")),
               TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port),
               virt, IscsiDirectConnector(virt, "iqn.2010-10.org.tether:img-test", "testhost",
                                          "127.0.0.1"),
               overrides={"compute": {"images_dir": images, "instances_dir": instances}})
    t.shared = shared  # type: ignore[attr-defined]
    try:
        yield t
    finally:
        t.stop()
        shutil.rmtree(shared, ignore_errors=True)


def test_guest_runs_the_image_and_takes_volumes(tether: Tether) -> None:
    nova, cinder = tether.nova(), tether.api()
    res = nova.post("/v2.1/servers", {"server": {"name": "img", "flavorRef": "1",
                                                 "imageRef": "bootsector.raw"}})
    assert res.status_code == 202, res.text
    sid = res.json["server"]["id"]
    try:
        wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] ==
                 "ACTIVE", 30, "server ACTIVE")
        console = os.path.join(tether.shared, "instances", sid,  # type: ignore[attr-defined]
                               "console.log")
        wait_for(lambda: os.path.exists(console) and MARKER in Path(console).read_bytes(),
                 30, "the boot sector's marker on the serial console")
        vid = tether.create_volume(cinder)["id"]
        nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                  {"volumeAttachment": {"volumeId": vid}})
        tether.wait_action(nova, sid, "attach_volume")
        assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"
        nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
        action = tether.wait_action(nova, sid, "detach_volume")
        assert not action["message"]
        assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    finally:
        nova.delete(f"/v2.1/servers/{sid}")
        wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").status_code == 404, 30,
                 "server deleted")
    assert not os.path.exists(os.path.join(tether.shared, "instances", sid))  # type: ignore[attr-defined]


def _qemu_io(overlay: str, command: str, *, readonly: bool = False) -> None:
    flags = ["-r", "-U"] if readonly else []  # -U: read beside a running QEMU
    done = subprocess.run(["qemu-io", *flags, "-f", "qcow2", "-c", command, overlay],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "Pattern verification failed" not in done.stdout, (
        done.stdout + done.stderr)


def test_unshelve_boots_the_image_again_on_the_same_root_disk(tether: Tether) -> None:
    """Shelve offloads at once here; unshelve brings back the guest that runs
    the server's image, on the root disk it had (this host kept it)."""
    nova = tether.nova()
    res = nova.post("/v2.1/servers", {"server": {"name": "shelved", "flavorRef": "1",
                                                 "imageRef": "bootsector.raw"}})
    assert res.status_code == 202, res.text
    sid = res.json["server"]["id"]
    folder = Path(tether.shared, "instances", sid)  # type: ignore[attr-defined]
    console, overlay = folder / "console.log", str(folder / "disk.qcow2")

    def status() -> str:
        return str(nova.get(f"/v2.1/servers/{sid}").json["server"]["status"])

    try:
        wait_for(lambda: status() == "ACTIVE", 30, "server ACTIVE")
        wait_for(lambda: console.exists() and MARKER in console.read_bytes(), 30,
                 "the boot sector's marker")
        assert nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None}).status_code == 202
        wait_for(lambda: status() == "SHELVED_OFFLOADED", 30, "offloaded")
        _qemu_io(overlay, "write -P 0xab 512k 4k")  # the guest's root disk, changed
        console.unlink()  # offloaded: no QEMU writes it
        assert nova.post(f"/v2.1/servers/{sid}/action", {"unshelve": None}).status_code == 202
        wait_for(lambda: status() == "ACTIVE", 30, "unshelved")
        wait_for(lambda: console.exists() and MARKER in console.read_bytes(), 30,
                 "the image's marker again after unshelve")
        disks = tether.virt.list_disks(sid)
        assert overlay in [d.source for d in disks], disks
        _qemu_io(overlay, "read -P 0xab 512k 4k", readonly=True)  # what it held is still there
        action = tether.wait_action(nova, sid, "unshelve")
        events = [e["event"] for e in action["events"]]
        assert events[events.index("prepare_root_disk") + 1] == "spawn", events
    finally:
        nova.delete(f"/v2.1/servers/{sid}")
        wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").status_code == 404, 30,
                 "server deleted")


def test_guest_boots_from_a_volume(tether: Tether) -> None:
    """The boot sector written into a volume: QEMU reads it over iSCSI and runs it."""
    nova, cinder = tether.nova(), tether.api()
    vid = tether.create_volume(cinder)["id"]
    with open(tether.embedded.volume.manager.backend.path(vid), "r+b") as f:
        f.write(boot_sector())
    res = nova.post("/v2.1/servers", {"server": {
        "name": "bfv", "flavorRef": "1", "block_device_mapping_v2": [
            {"boot_index": 0, "uuid": vid, "source_type": "volume",
             "destination_type": "volume"}]}})
    assert res.status_code == 202, res.text
    sid = res.json["server"]["id"]
    try:
        wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] ==
                 "ACTIVE", 30, "server ACTIVE")
        console = Path(tether.shared, "instances", sid, "console.log")  # type: ignore[attr-defined]
        wait_for(lambda: console.exists() and MARKER in console.read_bytes(), 30,
                 "the volume's boot sector on the serial console")
        assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"
        assert tether.target.sessions(vid)  # QEMU reads its boot disk over iSCSI
        res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
        assert res.status_code == 400
    finally:
        nova.delete(f"/v2.1/servers/{sid}")
        wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").status_code == 404, 30,
                 "server deleted")
    wait_for(lambda: cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] ==
             "available", 30, "boot volume released")
    assert vid not in tether.target.exports()


def test_an_offloaded_server_is_deleted_and_its_root_disk_goes_at_the_next_start(
        tether: Tether) -> None:
    nova = tether.nova()
    res = nova.post("/v2.1/servers", {"server": {"name": "gone", "flavorRef": "1",
                                                 "imageRef": "bootsector.raw"}})
    sid = res.json["server"]["id"]
    folder = Path(tether.shared, "instances", sid)  # type: ignore[attr-defined]
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "ACTIVE",
             30, "server ACTIVE")
    assert nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None}).status_code == 202
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] ==
             "SHELVED_OFFLOADED", 30, "offloaded")
    assert (folder / "disk.qcow2").exists()  # kept for an unshelve here
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    assert nova.get(f"/v2.1/servers/{sid}").status_code == 404
    assert sid in tether.embedded.compute.manager.prune_instance_files()
    assert not folder.exists()
