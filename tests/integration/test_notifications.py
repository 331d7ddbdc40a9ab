"""volume.attach / volume.detach notifications (start, end, error) from the
real stack, consumed from the bus: when one arrives, the real guest and tgt
already show what it announces."""

from __future__ import annotations

import queue
from collections.abc import Iterator

import pytest

from tests.harness import Notification, next_about, notifications
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, domain_xml, real_tether, secret_exists, server
from tether.virt.driver import disk_alias
from tether.virt.libvirt.driver import LibvirtDriver


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
           libvirtd: None) -> Iterator[RealTether]:
    with real_tether(str(tmp_path_factory.mktemp("notify")), tgtd, {
            "oslo_messaging_notifications": {"driver": ["messagingv2"]},
            # a guest that never releases its disk is given up on quickly
            "compute": {"device_detach_timeout": 0.5, "device_detach_attempts": 1}}) as t:
        yield t


@pytest.fixture
def received(tether: RealTether) -> Iterator[queue.Queue[Notification]]:
    with notifications(tether.conf) as got:
        yield got


def _status(t: RealTether, vid: str) -> str:
    return str(t.api().get(f"/v3/volumes/{vid}").json["volume"]["status"])


def _attach(t: RealTether, sid: str, vid: str, device: str | None = None) -> None:
    body = {"volumeId": vid} | ({"device": device} if device else {})
    res = t.nova().post(f"/v2.1/servers/{sid}/os-volume_attachments",
                        {"volumeAttachment": body})
    assert res.status_code == 200, res.text


def _detach(t: RealTether, sid: str, vid: str) -> None:
    assert t.nova().delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
                           ).status_code == 202


def test_attach_and_detach_announce_start_and_end(
        tether: RealTether, received: queue.Queue[Notification]) -> None:
    sid = server(tether, tether.nova())
    vid = tether.create_volume(tether.api())["id"]
    alias = disk_alias(vid)
    _attach(tether, sid, vid)
    assert next_about(received, vid)[:2] == ("info", "volume.attach.start")
    kind, event, payload = next_about(received, vid)
    assert (kind, event) == ("info", "volume.attach.end")
    (att,) = tether.api().get(f"/v3/attachments?volume_id={vid}").json["attachments"]
    assert (payload["server_id"], payload["attachment_id"]) == (sid, att["id"])
    assert alias in domain_xml(sid) and tether.target.sessions(vid) == {tether.initiator}
    assert _status(tether, vid) == "in-use"

    _detach(tether, sid, vid)
    assert next_about(received, vid)[:2] == ("info", "volume.detach.start")
    kind, event, payload = next_about(received, vid)
    assert (kind, event) == ("info", "volume.detach.end")
    assert (payload["server_id"], payload["attachment_id"]) == (sid, att["id"])
    assert alias not in domain_xml(sid) and alias not in domain_xml(sid, inactive=True)
    assert vid not in tether.target.exports() and not secret_exists(vid)
    assert _status(tether, vid) == "available"


def test_guest_refusing_unplug_announces_detach_error(
        tether: RealTether, received: queue.Queue[Notification]) -> None:
    """virtio-blk on a guest without an OS: the disk is never released."""
    sid = server(tether, tether.nova())
    vid = tether.create_volume(tether.api())["id"]
    _attach(tether, sid, vid, device="/dev/vdb")
    assert [next_about(received, vid)[1] for _ in range(2)] == [
        "volume.attach.start", "volume.attach.end"]

    _detach(tether, sid, vid)
    assert next_about(received, vid)[:2] == ("info", "volume.detach.start")
    kind, event, payload = next_about(received, vid)
    assert (kind, event) == ("error", "volume.detach.error")
    assert payload["server_id"] == sid and "did not release" in payload["error"]
    assert _status(tether, vid) == "in-use"  # rolled back before the error was announced
    assert disk_alias(vid) in domain_xml(sid)
    assert tether.target.exports()[vid].initiators == {tether.initiator}


def test_failed_attach_announces_attach_error(
        tether: RealTether, received: queue.Queue[Notification]) -> None:
    """The guest's domain is gone from libvirt: the attach fails and is undone."""
    sid = server(tether, tether.nova())
    vid = tether.create_volume(tether.api())["id"]
    LibvirtDriver().destroy(sid)
    _attach(tether, sid, vid)
    assert next_about(received, vid)[:2] == ("info", "volume.attach.start")
    kind, event, payload = next_about(received, vid)
    assert (kind, event) == ("error", "volume.attach.error")
    assert payload["server_id"] == sid
    action = tether.wait_action(tether.nova(), sid, "attach_volume")
    assert action["message"] == "Error"
    assert _status(tether, vid) == "available"
    assert vid not in tether.target.exports() and not secret_exists(vid)
