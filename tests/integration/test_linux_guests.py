"""Real Linux guests (issue 5): data a guest wrote before a detach is what
another guest reads after re-attach, on virtio-scsi and on virtio-blk, with
QEMU's own iSCSI initiator against the private tgtd.

Two guests booted from the tiny image (direct kernel boot under TCG) serve
every test of this module; each test uses its own volume.  The guests'
agent (the second serial port) writes and reads with O_DIRECT.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.harness import Api
from tests.integration.conftest import TinyImageFiles
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, domain_xml, real_tether
from tether.image import tiny
from tether.image.agent import GuestAgent
from tether.image.registry import ImageRegistry
from tether.virt.libvirt.events import Outcome

LOG = logging.getLogger(__name__)
MIB = 64


@dataclass
class Guest:
    sid: str
    agent: GuestAgent


@dataclass
class Linux:
    t: RealTether
    image_id: str
    a: Guest
    b: Guest
    removed: list[tuple[str, str, Outcome]]


def _boot(t: RealTether, nova: Api, image_id: str, name: str) -> str:
    res = nova.post("/v2.1/servers", {"server": {"name": name, "flavorRef": "3",
                                                 "imageRef": image_id}})
    assert res.status_code == 202, res.text
    sid: str = res.json["server"]["id"]
    t.servers.append(sid)
    return sid


@pytest.fixture(scope="module")
def linux(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          tiny_image: TinyImageFiles) -> Iterator[Linux]:
    with real_tether(str(tmp_path_factory.mktemp("linux")), tgtd,
                     tiny_image.overrides()) as t:
        registry = ImageRegistry(t.db, f"{tiny_image.shared}/images")
        image, _ = tiny.register(registry, tiny_image.image)
        nova = t.nova()
        started = time.perf_counter()
        sids = [_boot(t, nova, image.id, f"linux-{x}") for x in "ab"]  # boot side by side
        guests = []
        for sid in sids:
            agent = GuestAgent(f"{tiny_image.shared}/instances/{sid}/agent.sock")
            agent.wait_ready(timeout=90)
            guests.append(Guest(sid, agent))
        LOG.info("tiny image built in %.1fs; two guests booted in %.1fs",
                    tiny_image.build_seconds, time.perf_counter() - started)
        removed: list[tuple[str, str, Outcome]] = []
        events = t.virt.events  # type: ignore[attr-defined]
        fire = events.fire

        def record(domain_uuid: str, alias: str, outcome: Outcome) -> None:
            removed.append((domain_uuid, alias, outcome))
            fire(domain_uuid, alias, outcome)

        events.fire = record
        try:
            yield Linux(t, image.id, guests[0], guests[1], removed)
        finally:
            events.fire = fire
            for g in guests:
                g.agent.close()


def _attach(t: RealTether, nova: Api, sid: str, vid: str, device: str | None) -> None:
    body: dict[str, Any] = {"volumeId": vid}
    if device:
        body["device"] = device
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments", {"volumeAttachment": body})
    assert res.status_code == 200, res.text
    action = t.wait_action(nova, sid, "attach_volume")
    assert not action["message"], action


def _detach(t: RealTether, nova: Api, sid: str, vid: str) -> dict[str, Any]:
    assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}").status_code == 202
    action = t.wait_action(nova, sid, "detach_volume")
    assert not action["message"], action
    return action


def _with_volume(t: RealTether, guest: Guest, vid: str, device: str | None, what: str,
                 work: Callable[[], str]) -> str:
    """Attach the volume to ``guest``, run ``work`` once the guest sees the
    disk, detach it and wait until the guest saw the disk go."""
    nova = t.nova()
    _attach(t, nova, guest.sid, vid, device)
    guest.agent.wait_disk(vid)
    started = time.perf_counter()
    result = work()
    LOG.info("%s: %s %d MiB in %.1fs", device or "scsi", what, MIB,
             time.perf_counter() - started)
    _detach(t, nova, guest.sid, vid)
    guest.agent.wait_disk_gone(vid)  # the guest saw its disk go
    return result


def _write_detach_read(linux: Linux, device: str | None) -> tuple[str, str]:
    t, a, b = linux.t, linux.a, linux.b
    cinder = t.api()
    vid = t.create_volume(cinder)["id"]
    wrote = _with_volume(t, a, vid, device, "guest A wrote",
                         lambda: a.agent.write_random(vid, MIB))
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    read = _with_volume(t, b, vid, device, "guest B read",
                        lambda: b.agent.read_sha256(vid, MIB))
    assert cinder.delete(f"/v3/volumes/{vid}").status_code == 202
    return wrote, read


def test_guests_boot_the_tiny_image_under_tcg(linux: Linux) -> None:
    for g in (linux.a, linux.b):
        xml = domain_xml(g.sid)
        assert "type='qemu'" in xml.split("\n", 1)[0]  # TCG: this KVM cannot boot Linux
        assert "<kernel>" in xml and "<initrd>" in xml
        assert g.agent.call("ping") == "pong"


def test_data_survives_reattach_on_virtio_scsi(linux: Linux) -> None:
    wrote, read = _write_detach_read(linux, None)
    assert len(wrote) == 64 and wrote == read


def test_data_survives_reattach_on_virtio_blk(linux: Linux) -> None:
    """A Linux guest releases a virtio-blk disk: libvirt's DEVICE_REMOVED
    event ends the unplug (not the timeout) and the guest sees the disk go."""
    linux.removed.clear()
    wrote, read = _write_detach_read(linux, "/dev/vdb")
    assert len(wrote) == 64 and wrote == read
    for g in (linux.a, linux.b):
        assert [(u, o) for u, _alias, o in linux.removed if u == g.sid] == \
            [(g.sid, Outcome.REMOVED)]

