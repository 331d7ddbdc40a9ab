"""Attach and detach end to end: Compute API → RPC → compute manager →
libvirt (real QEMU guest, QEMU's iSCSI initiator) → Block Storage API →
volume service → tgt.  Every end state of the spec's table is checked on the
real daemons."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Api, Tether, wait_for
from tests.integration.daemons import Tgtd
from tether.connectors.iscsi_direct import IscsiDirectConnector
from tether.db import models
from tether.executor import ProcessRunner
from tether.operations import DETACH_STEPS
from tether.virt.driver import disk_alias
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.targets.tgt import TgtTarget

INITIATOR = f"iqn.2010-10.org.tether:it-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
           libvirtd: None) -> Iterator[Tether]:
    virt = LibvirtDriver()
    t = Tether(str(tmp_path_factory.mktemp("compute")),
               TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port),
               virt, IscsiDirectConnector(virt, INITIATOR, "testhost", "127.0.0.1"),
               overrides={"compute": {"device_detach_timeout": 1.0,
                                      "device_detach_attempts": 2}})
    servers: list[str] = []
    t.servers = servers  # type: ignore[attr-defined]
    try:
        yield t
    finally:
        # deleting through the API also disconnects what is still attached
        # (the refusing guest keeps its volume): no domain or secret is left
        nova = t.nova("admin:p1")
        for sid in servers:
            nova.delete(f"/v2.1/servers/{sid}")
        for sid in servers:
            wait_for(lambda sid=sid: nova.get(f"/v2.1/servers/{sid}").status_code == 404, 30,
                     f"server {sid} deleted")
            virt.destroy(sid)
        t.stop()


def _server(t: Tether, nova: Api) -> str:
    sid: str = t.create_server(nova, f"it-{uuid.uuid4().hex[:6]}")["id"]
    t.servers.append(sid)  # type: ignore[attr-defined]
    return sid


def _xml(sid: str, inactive: bool = False) -> str:
    argv = ["virsh", "-c", "qemu:///system", "dumpxml", sid]
    if inactive:
        argv.append("--inactive")
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _attach(t: Tether, nova: Api, sid: str, vid: str, device: str | None = None) -> None:
    body: dict[str, Any] = {"volumeId": vid}
    if device:
        body["device"] = device
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments", {"volumeAttachment": body})
    assert res.status_code == 200, res.text
    t.wait_action(nova, sid, "attach_volume")


def _secret_exists(vid: str) -> bool:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "secret-list"], capture_output=True,
                         text=True, check=True).stdout
    return f"tether-volume-{vid}" in out


def test_attach_then_detach_end_states(tether: Tether, tgtd: Tgtd) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = _server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid)

    vol = cinder.get(f"/v3/volumes/{vid}").json["volume"]
    assert vol["status"] == "in-use"
    assert vol["attachments"][0]["server_id"] == sid
    alias = disk_alias(vid)
    assert alias in _xml(sid) and alias in _xml(sid, inactive=True)
    assert tether.target.sessions(vid) == {INITIATOR}
    assert tether.target.exports()[vid].initiators == {INITIATOR}
    assert _secret_exists(vid)
    rows = nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json["volumeAttachments"]
    assert [r["volumeId"] for r in rows] == [vid]

    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 202 and res.text == ""
    action = tether.wait_action(nova, sid, "detach_volume")
    assert action["finish_time"] and not action["message"]
    assert [e["event"] for e in action["events"]] == list(DETACH_STEPS)
    assert all(e["result"] == "Success" and e["finish_time"] for e in action["events"])

    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    assert alias not in _xml(sid) and alias not in _xml(sid, inactive=True)
    wait_for(lambda: not tether.target.sessions(vid), 5, "iSCSI session gone")
    assert vid not in tether.target.exports()
    assert f"volume-{vid}" not in tgtd.show()
    assert not _secret_exists(vid)
    with tether.db.session() as s:
        bdm = s.query(models.BlockDeviceMapping).filter_by(volume_id=vid).one()
        assert bdm.deleted and bdm.deleted_at is not None
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []


def test_guest_refusing_unplug_rolls_back(tether: Tether) -> None:
    """virtio-blk on a guest without an OS: the disk is never released."""
    nova, cinder = tether.nova(), tether.api()
    sid = _server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid, device="/dev/vdb")
    assert 'bus="virtio"' in _xml(sid).replace("'", '"')

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
    assert alias in _xml(sid) and alias in _xml(sid, inactive=True)
    assert tether.target.exports()[vid].initiators == {INITIATOR}
    assert _secret_exists(vid)
    rows = nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json["volumeAttachments"]
    assert [r["volumeId"] for r in rows] == [vid]


def test_detach_errors(tether: Tether) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = _server(tether, nova)
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
