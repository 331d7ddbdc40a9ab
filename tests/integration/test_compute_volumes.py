"""Attach and detach end to end: Compute API → RPC → compute manager →
libvirt (real QEMU guest, QEMU's iSCSI initiator) → Block Storage API →
volume service → tgt.  Every end state of the spec's table is checked on the
real daemons."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Api, db_rows, wait_for
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, domain_xml, real_tether, secret_exists, server
from tether.compute.operations import DETACH_STEPS
from tether.db import models
from tether.virt.driver import disk_alias


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
           libvirtd: None) -> Iterator[RealTether]:
    with real_tether(str(tmp_path_factory.mktemp("compute")), tgtd) as t:
        yield t


def _attach(t: RealTether, nova: Api, sid: str, vid: str, device: str | None = None) -> None:
    body: dict[str, Any] = {"volumeId": vid}
    if device:
        body["device"] = device
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments", {"volumeAttachment": body})
    assert res.status_code == 200, res.text
    t.wait_action(nova, sid, "attach_volume")



def test_attach_then_detach_end_states(tether: RealTether, tgtd: Tgtd) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid)

    vol = cinder.get(f"/v3/volumes/{vid}").json["volume"]
    assert vol["status"] == "in-use"
    assert vol["attachments"][0]["server_id"] == sid
    alias = disk_alias(vid)
    assert alias in domain_xml(sid) and alias in domain_xml(sid, inactive=True)
    assert tether.target.sessions(vid) == {tether.initiator}
    assert tether.target.exports()[vid].initiators == {tether.initiator}
    assert secret_exists(vid)
    rows = nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json["volumeAttachments"]
    assert [r["volumeId"] for r in rows] == [vid]

    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 202 and res.text == ""
    action = tether.wait_action(nova, sid, "detach_volume")
    assert action["finish_time"] and not action["message"]
    assert [e["event"] for e in action["events"]] == list(DETACH_STEPS)
    assert all(e["result"] == "Success" and e["finish_time"] for e in action["events"])

    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    assert alias not in domain_xml(sid) and alias not in domain_xml(sid, inactive=True)
    wait_for(lambda: not tether.target.sessions(vid), 5, "iSCSI session gone")
    assert vid not in tether.target.exports()
    assert f"volume-{vid}" not in tgtd.show()
    assert not secret_exists(vid)
    (bdm,) = db_rows(tether.db, models.BlockDeviceMapping, volume_id=vid)
    assert bdm.deleted and bdm.deleted_at is not None and bdm.live_volume is None
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []


def test_guest_refusing_unplug_rolls_back(tether: RealTether) -> None:
    """virtio-blk on a guest without an OS: the disk is never released."""
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid, device="/dev/vdb")
    assert 'bus="virtio"' in domain_xml(sid).replace("'", '"')

    t0 = time.monotonic()
    assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}").status_code == 202
    action = tether.wait_action(nova, sid, "detach_volume", timeout=60)
    took = time.monotonic() - t0
    assert action["message"] == "Error"
    failed = {e["event"]: e for e in action["events"] if e["result"] == "Error"}
    assert set(failed) == {"s1.1:driver_detach", "s1.1.1:guest_device_removal"}
    assert "did not release" in failed["s1.1.1:guest_device_removal"]["details"]
    # nothing after the guest's refusal ran: no host disconnect, no storage change
    assert [e["event"] for e in action["events"]] == list(DETACH_STEPS[:3])
    assert 2.0 <= took < 30
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"
    alias = disk_alias(vid)
    assert alias in domain_xml(sid) and alias in domain_xml(sid, inactive=True)
    assert tether.target.exports()[vid].initiators == {tether.initiator}
    assert secret_exists(vid)
    rows = nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json["volumeAttachments"]
    assert [r["volumeId"] for r in rows] == [vid]


def test_detach_errors(tether: RealTether) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    other_vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid)
    url = f"/v2.1/servers/{sid}/os-volume_attachments"

    assert nova.delete(f"/v2.1/servers/{uuid.uuid4()}/os-volume_attachments/{vid}"
                       ).status_code == 404
    assert nova.delete(f"{url}/{uuid.uuid4()}").status_code == 404
    res = nova.delete(f"{url}/{other_vid}")
    assert res.status_code == 404
    assert "is not attached to volume" in res.json["itemNotFound"]["message"]
    assert tether.nova("bob:p2").delete(f"{url}/{vid}").status_code == 404

    assert nova.post(f"/v2.1/servers/{sid}/action", {"lock": None}).status_code == 202
    res = nova.delete(f"{url}/{vid}")
    assert res.status_code == 409 and "locked" in res.json["conflictingRequest"]["message"]
    assert nova.post(f"/v2.1/servers/{sid}/action", {"unlock": None}).status_code == 202

    # a detach already under way: the volume is 'detaching'
    admin = tether.api("admin:p1")
    admin.post(f"/v3/volumes/{vid}/action", {"os-begin_detaching": {}})
    res = nova.delete(f"{url}/{vid}")
    assert res.status_code in (400, 409)
    assert "detaching" in str(res.json)
    admin.post(f"/v3/volumes/{vid}/action", {"os-roll_detaching": {}})
    assert nova.delete(f"{url}/{vid}").status_code == 202
    tether.wait_action(nova, sid, "detach_volume")
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
