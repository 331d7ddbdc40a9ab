"""Attach and detach through the APIs on a host whose connector is ``iscsi``:
the guest gets the host block device os-brick found, the storage side admits
open-iscsi's initiator, and the detach's s2 logs the host out.  os-brick
runs for real against the fake host of tests/unit/connectors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Tether
from tests.unit.connectors.fake_iscsi_host import (
    INITIATOR,
    FakeIscsiHost,
    Target,
    install,
    os_brick_setup,
)
from tether.connectors.iscsi import IscsiConnector
from tether.virt.driver import BlockDiskSource
from tether.virt.fake import FakeDriver
from tether.volume.targets.base import target_iqn
from tether.volume.targets.fake import FakeTarget


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIscsiHost]:
    fake = FakeIscsiHost(tmp_path / "host", [])
    install(monkeypatch, fake)
    with os_brick_setup(tmp_path / "locks", monkeypatch):
        yield fake


@pytest.fixture
def tether(tmp_path: Path, host: FakeIscsiHost) -> Iterator[Tether]:
    t = Tether(str(tmp_path / "state"), FakeTarget(), FakeDriver(),
               IscsiConnector("testhost", execute=host.execute))
    try:
        yield t
    finally:
        t.stop()


def test_guest_gets_the_host_device_and_detach_logs_the_host_out(
        tether: Tether, host: FakeIscsiHost) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = tether.create_server(nova)["id"]
    vid = tether.create_volume(cinder)["id"]
    iqn = target_iqn(vid)
    host.targets[iqn] = Target(iqn, "127.0.0.1:3260", tid=1, luns={1})

    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200, res.text
    assert tether.wait_action(nova, sid, "attach_volume")["events"][-1]["result"] == "Success"

    assert isinstance(tether.virt, FakeDriver)
    assert tether.virt.guests[sid].live[vid].source == BlockDiskSource("/dev/sdb")
    assert tether.target.exports()[vid].initiators == {INITIATOR}
    assert list(host.sessions) == [("127.0.0.1:3260", iqn)]

    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    action = tether.wait_action(nova, sid, "detach_volume")

    assert {e["event"]: e["result"] for e in action["events"]}["s2:host_disconnect"] == \
        "Success"
    assert f"iscsiadm -m node -T {iqn} -p 127.0.0.1:3260 --logout" in host.commands
    assert host.sessions == {} and host.nodes == {}
    assert not (host.root / "dev/sdb").exists()
    assert vid not in tether.target.exports()
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
