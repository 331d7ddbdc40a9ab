"""The Compute API with fake drivers: servers, flavors, volume attachments
(every check of the spec's step 0 and s1) and instance actions."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from tests.harness import (
    Api,
    Tether,
    bdm_of,
    db_rows,
    queued_detach,
    run_on_host,
    set_row,
    wait_for,
)
from tether.compute.operations import ATTACH_STEPS, DETACH_STEPS
from tether.db import models
from tether.virt.driver import disk_alias
from tether.virt.fake import FakeDriver


def _virt(t: Tether) -> FakeDriver:
    assert isinstance(t.virt, FakeDriver)
    return t.virt


def _attach(t: Tether, nova: Api, sid: str, vid: str, **extra: Any) -> dict[str, Any]:
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid, **extra}})
    assert res.status_code == 200, res.text
    t.wait_action(nova, sid, "attach_volume")
    return dict(res.json["volumeAttachment"])


def _setup(t: Tether, token: str = "alice:p1") -> tuple[Api, Api, str, str]:
    nova, cinder = t.nova(token), t.api(token)
    sid = t.create_server(nova)["id"]
    vid = t.create_volume(cinder)["id"]
    return nova, cinder, sid, vid


def _status(cinder: Api, vid: str) -> str:
    return str(cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"])


# -- discovery, flavors, servers ------------------------------------------------

@pytest.mark.parametrize("path", ["/v2.1", "/v2.1/"])
def test_version_document(tether: Tether, path: str) -> None:
    v = tether.nova().client.simulate_get(path).json["version"]
    assert (v["id"], v["version"], v["min_version"]) == ("v2.1", "2.96", "2.1")


def test_both_microversion_headers(tether: Tether) -> None:
    nova = tether.nova()
    res = nova.get("/v2.1/flavors", headers={"OpenStack-API-Version": "",
                                             "X-OpenStack-Nova-API-Version": "2.60"})
    assert res.headers["X-OpenStack-Nova-API-Version"] == "2.60"
    assert res.headers["OpenStack-API-Version"] == "compute 2.60"
    assert nova.get("/v2.1/flavors", headers={"OpenStack-API-Version": "compute 2.97"}
                    ).status_code == 406


def test_flavors(tether: Tether) -> None:
    nova = tether.nova()
    names = {f["name"] for f in nova.get("/v2.1/flavors").json["flavors"]}
    assert "t1.nano" in names
    f = nova.get("/v2.1/flavors/1").json["flavor"]
    assert (f["vcpus"], f["ram"]) == (1, 64)
    assert nova.get("/v2.1/flavors/99").status_code == 404
    # openstack flavor show reads the extra specs: there are none
    assert nova.get("/v2.1/flavors/1/os-extra_specs").json == {"extra_specs": {}}
    assert nova.get("/v2.1/flavors/1/os-extra_specs/hw:cpu_policy").status_code == 404
    assert nova.get("/v2.1/flavors/99/os-extra_specs").status_code == 404


def test_server_lifecycle(tether: Tether) -> None:
    nova = tether.nova()
    srv = tether.create_server(nova, "web")
    assert srv["flavor"]["vcpus"] == 1 and srv["os-extended-volumes:volumes_attached"] == []
    sid = srv["id"]
    assert sid in {s["id"] for s in nova.get("/v2.1/servers").json["servers"]}
    assert [s["id"] for s in nova.get("/v2.1/servers/detail?name=^web$").json["servers"]
            ] == [sid]
    assert nova.post(f"/v2.1/servers/{sid}/action", {"os-stop": None}).status_code == 202
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "SHUTOFF")
    assert nova.post(f"/v2.1/servers/{sid}/action", {"os-stop": None}).status_code == 409
    assert nova.post(f"/v2.1/servers/{sid}/action", {"os-start": None}).status_code == 202
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "ACTIVE")
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").status_code == 404)
    assert sid not in _virt(tether).guests


@pytest.mark.parametrize(("body", "status"), [
    (None, 400), ({"server": {}}, 400), ({"server": {"name": "x"}}, 400),
    ({"server": {"name": "", "flavorRef": "1"}}, 400),
    ({"server": {"name": "x", "flavorRef": "404"}}, 404),
    ({"server": {"name": "x", "flavorRef": "1", "imageRef": "/etc/shadow"}}, 400),
    ({"server": {"name": "x", "flavorRef": "1", "imageRef": "../shadow"}}, 400),
    ({"server": {"name": "x", "flavorRef": "1", "imageRef": 7}}, 400),
])
def test_server_create_errors(tether: Tether, body: Any, status: int) -> None:
    res = tether.nova().post("/v2.1/servers", body)
    assert res.status_code == status, res.text
    (fault,) = res.json.values()
    assert fault["code"] == status


def test_missing_image_puts_the_server_in_error_and_says_why(tether: Tether) -> None:
    nova = tether.nova()
    res = nova.post("/v2.1/servers", {"server": {"name": "x", "flavorRef": "1",
                                                 "imageRef": "no-such.qcow2"}})
    sid = res.json["server"]["id"]
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "ERROR")
    action = tether.wait_action(nova, sid, "create")
    (failed,) = [e for e in action["events"] if e["result"] == "Error"]
    assert failed["event"] == "prepare_root_disk"
    assert "no-such.qcow2 not found" in failed["details"]


def test_other_projects_server_is_404(tether: Tether) -> None:
    sid = tether.create_server(tether.nova())["id"]
    bob = tether.nova("bob:p2")
    assert bob.get(f"/v2.1/servers/{sid}").status_code == 404
    assert bob.delete(f"/v2.1/servers/{sid}").status_code == 404
    assert bob.get(f"/v2.1/servers/{sid}/os-volume_attachments").status_code == 404
    assert tether.nova("admin:p9").get(f"/v2.1/servers/{sid}").status_code == 200
    assert tether.nova().get("/v2.1/servers/not-a-uuid").status_code == 404


# -- attach ------------------------------------------------------------------------

def test_attach_records_steps_and_shapes_follow_microversions(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    created = _attach(tether, nova.as_version("2.79"), sid, vid, tag="data",
                      delete_on_termination=True)
    assert created == {"id": vid, "serverId": sid, "volumeId": vid, "device": "/dev/sdb",
                       "tag": "data", "delete_on_termination": True}
    assert _status(cinder, vid) == "in-use"
    assert disk_alias(vid) in {d.alias for d in _virt(tether).list_disks(sid)}
    old = nova.as_version("2.1").get(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert set(old.json["volumeAttachment"]) == {"id", "serverId", "volumeId", "device"}
    new = nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json["volumeAttachments"][0]
    assert "id" not in new and new["attachment_id"] and new["bdm_uuid"]
    action = tether.wait_action(nova, sid, "attach_volume")
    assert [e["event"] for e in action["events"]] == list(ATTACH_STEPS)
    srv = nova.get(f"/v2.1/servers/{sid}").json["server"]
    assert srv["os-extended-volumes:volumes_attached"] == [
        {"id": vid, "delete_on_termination": True}]
    # the guest device reaches block storage with the connector (Nova's
    # mountpoint): the volume's attachments say where it is, as clients expect
    vol = cinder.get(f"/v3/volumes/{vid}").json["volume"]
    assert [(a["server_id"], a["device"]) for a in vol["attachments"]] == [(sid, "/dev/sdb")]


def test_update_delete_on_termination_from_285(tether: Tether) -> None:
    nova, _, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid, tag="keep")
    url = f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
    new = nova.as_version("2.85")
    res = new.put(url, {"volumeAttachment": {"volumeId": vid, "delete_on_termination": True,
                                             "tag": "keep", "serverId": sid}})
    assert res.status_code == 202 and res.text == ""
    assert new.get(url).json["volumeAttachment"]["delete_on_termination"] is True
    for version, body in (
            ("2.84", {"volumeId": vid, "delete_on_termination": False}),  # a swap before 2.85
            ("2.85", {"volumeId": str(uuid.uuid4())}),  # a swap
            ("2.85", {"volumeId": vid, "tag": "other"}),  # only delete_on_termination changes
            ("2.85", {"volumeId": vid, "bdm_uuid": "x"})):
        res = nova.as_version(version).put(url, {"volumeAttachment": body})
        assert res.status_code == 400, (version, body, res.text)
    assert new.get(url).json["volumeAttachment"]["delete_on_termination"] is True
    assert tether.nova("bob:p2", "2.85").put(url, {"volumeAttachment": {
        "volumeId": vid, "delete_on_termination": False}}).status_code == 404


@pytest.mark.parametrize("path", ["/v2.1/servers", "/v2.1/servers/detail"])
def test_name_filter_is_a_regex_and_an_invalid_one_is_400(tether: Tether, path: str) -> None:
    nova = tether.nova()
    name = f"rx-{uuid.uuid4().hex[:8]}"
    sid = tether.create_server(nova, name)["id"]
    assert [s["id"] for s in nova.get(f"{path}?name=^{name}$").json["servers"]] == [sid]
    res = nova.get(f"{path}?name={name}[")
    assert res.status_code == 400 and "regular expression" in res.json["badRequest"]["message"]


def test_pinned_availability_zone_from_296(tether: Tether) -> None:
    nova = tether.nova()
    sid = tether.create_server(nova)["id"]
    assert "pinned_availability_zone" not in nova.as_version("2.95").get(
        f"/v2.1/servers/{sid}").json["server"]
    assert nova.as_version("2.96").get(f"/v2.1/servers/{sid}").json["server"][
        "pinned_availability_zone"] is None


@pytest.mark.parametrize(("version", "extra", "message"), [
    ("2.48", {"tag": "t"}, "tag"),
    ("2.78", {"delete_on_termination": True}, "delete_on_termination"),
    ("2.89", {"tag": "a/b"}, "tag"),
    ("2.89", {"delete_on_termination": "yes"}, "delete_on_termination"),
    ("2.89", {"device": "/dev/hda"}, "device path"),
    ("2.89", {"bogus": 1}, "bogus"),
])
def test_attach_body_validation(tether: Tether, version: str, extra: dict[str, Any],
                                message: str) -> None:
    nova, _, sid, vid = _setup(tether)
    res = nova.as_version(version).post(f"/v2.1/servers/{sid}/os-volume_attachments",
                                        {"volumeAttachment": {"volumeId": vid, **extra}})
    assert res.status_code == 400
    assert message in res.json["badRequest"]["message"]


def test_attach_errors(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    url = f"/v2.1/servers/{sid}/os-volume_attachments"
    assert nova.post(url, {"volumeAttachment": {"volumeId": "x"}}).status_code == 400
    assert nova.post(url, {"volumeAttachment": {"volumeId": str(uuid.uuid4())}}
                     ).status_code == 404
    _attach(tether, nova, sid, vid)
    res = nova.post(url, {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 400 and "already attached" in res.json["badRequest"]["message"]
    other = tether.create_server(nova)["id"]
    res = nova.post(f"/v2.1/servers/{other}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 400 and "in-use" in res.json["badRequest"]["message"]
    multi = tether.create_volume(cinder, multiattach=True)["id"]
    res = nova.as_version("2.59").post(url, {"volumeAttachment": {"volumeId": multi}})
    assert res.status_code == 400 and "2.60" in res.json["badRequest"]["message"]
    bob_vid = tether.create_volume(tether.api("bob:p2"))["id"]
    assert nova.post(url, {"volumeAttachment": {"volumeId": bob_vid}}).status_code == 404


def test_attach_failure_rolls_everything_back(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _virt(tether).fail_attach.add(vid)
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200
    action = tether.wait_action(nova, sid, "attach_volume")
    assert action["message"] == "Error"
    assert {e["event"]: e["result"] for e in action["events"]}[
        "a1.1.1:guest_device_add"] == "Error"
    assert _status(cinder, vid) == "available"
    assert vid not in tether.target.exports()
    assert not _virt(tether).has_chap_secret(vid)
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []
    _virt(tether).fail_attach.discard(vid)
    _attach(tether, nova, sid, vid)  # and it can simply be tried again
    assert _status(cinder, vid) == "in-use"


# -- detach ------------------------------------------------------------------------

def test_detach_happy_path(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid, tag="x")
    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 202 and not res.text
    action = tether.wait_action(nova, sid, "detach_volume")
    assert [e["event"] for e in action["events"]] == list(DETACH_STEPS)
    assert all(e["result"] == "Success" for e in action["events"])
    assert _status(cinder, vid) == "available"
    assert vid not in tether.target.exports()
    assert not _virt(tether).has_chap_secret(vid)
    assert _virt(tether).list_disks(sid, live=False) == []
    assert _virt(tether).detach_attempts[vid] == tether.conf.compute.device_detach_attempts


def test_guest_refusing_unplug_rolls_back(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    _virt(tether).refuse_unplug.add(vid)
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    action = tether.wait_action(nova, sid, "detach_volume")
    assert action["message"] == "Error"
    assert _status(cinder, vid) == "in-use"
    assert disk_alias(vid) in {d.alias for d in _virt(tether).list_disks(sid)}
    assert tether.target.exports()[vid].initiators
    assert len(nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"]) == 1
    # the owner sees the failed step without the traceback; an admin sees both
    owner_ev = {e["event"]: e for e in action["events"]}["s1.1.1:guest_device_removal"]
    assert owner_ev["result"] == "Error" and "traceback" not in owner_ev
    admin = tether.nova("admin:p1")
    rid = action["request_id"]
    admin_ev = {e["event"]: e for e in admin.get(
        f"/v2.1/servers/{sid}/os-instance-actions/{rid}").json["instanceAction"]["events"]}
    assert "DeviceDetachFailed" in admin_ev["s1.1.1:guest_device_removal"]["traceback"]
    _virt(tether).refuse_unplug.discard(vid)


def test_disk_already_gone_still_cleans_storage(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    guest = _virt(tether).guests[sid]
    guest.live.pop(vid)
    guest.persistent.pop(vid)
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    action = tether.wait_action(nova, sid, "detach_volume")
    assert not action["message"]
    assert _status(cinder, vid) == "available"
    assert vid not in tether.target.exports()


def test_missing_domain_still_cleans_storage(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    _virt(tether).destroy(sid)
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    tether.wait_action(nova, sid, "detach_volume")
    assert _status(cinder, vid) == "available"


def test_detach_checks_in_spec_order(tether: Tether) -> None:
    nova, _cinder, sid, vid = _setup(tether)
    url = f"/v2.1/servers/{sid}/os-volume_attachments"
    assert nova.delete(f"/v2.1/servers/{uuid.uuid4()}/os-volume_attachments/{vid}"
                       ).status_code == 404
    assert nova.delete(f"{url}/{uuid.uuid4()}").status_code == 404
    res = nova.delete(f"{url}/{vid}")
    assert res.status_code == 404
    assert res.json["itemNotFound"]["message"] == (
        f"Instance {sid} is not attached to volume {vid}.")
    _attach(tether, nova, sid, vid)
    assert tether.nova("bob:p2").delete(f"{url}/{vid}").status_code == 404

    nova.post(f"/v2.1/servers/{sid}/action", {"lock": None})
    assert nova.delete(f"{url}/{vid}").status_code == 409
    nova.post(f"/v2.1/servers/{sid}/action", {"unlock": None})

    admin = tether.api("admin:p1")
    admin.post(f"/v3/volumes/{vid}/action", {"os-begin_detaching": {}})
    res = nova.delete(f"{url}/{vid}")
    assert res.status_code == 400 and "but it is detaching" in str(res.json)
    admin.post(f"/v3/volumes/{vid}/action", {"os-roll_detaching": {}})


def test_root_volume_cannot_be_detached(tether: Tether) -> None:
    nova, _cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    set_row(tether.db, models.BlockDeviceMapping, bdm_of(tether.db, sid, vid).id, boot_index=0)
    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 400
    assert res.json["badRequest"]["message"] == "Cannot detach a root device volume."


def test_shelved_needs_220(tether: Tether) -> None:
    nova, _cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    set_row(tether.db, models.Instance, sid, vm_state="shelved")
    res = nova.as_version("2.19").delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 409 and "2.20" in res.json["conflictingRequest"]["message"]
    set_row(tether.db, models.Instance, sid, vm_state="active")


def test_compute_service_down_is_409_and_changes_nothing(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    (svc,) = db_rows(tether.db, models.Service, binary="tether-compute")
    set_row(tether.db, models.Service, svc.id,
            last_seen_at=models.utcnow() - dt.timedelta(hours=1))
    try:
        res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
        assert res.status_code == 409
        assert "unavailable" in res.json["conflictingRequest"]["message"]
        assert _status(cinder, vid) == "in-use"
    finally:
        set_row(tether.db, models.Service, svc.id, last_seen_at=svc.last_seen_at)


def test_user_cannot_pull_an_attachment_from_under_a_guest(tether: Tether) -> None:
    """CVE-2023-2088: a project member deleting an in-use attachment through the
    Block Storage API is refused; the compute API is the way."""
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    (att,) = cinder.get(f"/v3/attachments?volume_id={vid}").json["attachments"]
    res = cinder.delete(f"/v3/attachments/{att['id']}")
    assert res.status_code == 409
    assert f"/servers/{sid}/os-volume_attachments/{vid}" in res.json[
        "conflictingRequest"]["message"]
    assert vid in tether.target.exports()


def test_delete_server_detaches_and_honours_delete_on_termination(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    keep = tether.create_volume(cinder)["id"]
    _attach(tether, nova.as_version("2.79"), sid, vid, delete_on_termination=True)
    _attach(tether, nova, sid, keep)
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    wait_for(lambda: cinder.get(f"/v3/volumes/{vid}").status_code == 404, what="deleted")
    wait_for(lambda: _status(cinder, keep) == "available", what="kept volume available")
    assert keep not in tether.target.exports() and vid not in tether.target.exports()


def test_instance_actions_list_and_404(tether: Tether) -> None:
    nova, _, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    rows = nova.get(f"/v2.1/servers/{sid}/os-instance-actions").json["instanceActions"]
    assert [r["action"] for r in rows][:2] == ["attach_volume", "create"]
    assert nova.get(f"/v2.1/servers/{sid}/os-instance-actions/req-nope").status_code == 404


def test_delete_server_goes_on_when_a_volume_cannot_be_cleaned(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    connector = tether.connector
    assert connector is not None
    connector.fail_on.add("disconnect")  # type: ignore[attr-defined]
    try:
        assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
        wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").status_code == 404,
                 what="server deleted")
    finally:
        connector.fail_on.discard("disconnect")  # type: ignore[attr-defined]
    (row,) = db_rows(tether.db, models.InstanceAction, instance_uuid=sid, action="delete")
    assert row.finish_time is not None and row.message == "Error"
    # the volume keeps its attachment for an operator to look at, it is not lost
    assert _status(cinder, vid) == "in-use"


def test_tagged_device_appears_in_device_metadata_until_detached(tether: Tether) -> None:
    nova, _, sid, vid = _setup(tether)
    plain = tether.create_volume(tether.api())["id"]
    _attach(tether, nova, sid, vid, tag="database")
    _attach(tether, nova, sid, plain)
    devices = nova.get(f"/v2.1/servers/{sid}/device-metadata").json["devices"]
    assert devices == [{"type": "disk", "bus": "scsi", "serial": vid, "path": "/dev/sdb",
                        "tags": ["database"]}]
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    tether.wait_action(nova, sid, "detach_volume")
    assert nova.get(f"/v2.1/servers/{sid}/device-metadata").json["devices"] == []
    assert tether.nova("bob:p2").get(f"/v2.1/servers/{sid}/device-metadata").status_code == 404


def test_server_registered_elsewhere_skips_driver_detach_but_cleans_storage(
        tether: Tether, caplog: pytest.LogCaptureFixture) -> None:
    """The cast reached this host, but the server now belongs to another one
    (evacuated meanwhile): no guest work here, the storage side is cleaned."""
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    action_id = queued_detach(tether, sid, vid)
    set_row(tether.db, models.Instance, sid, host="elsewhere")
    assert run_on_host(tether, sid, action_id)
    assert tether.wait_action(nova, sid, "detach_volume")["message"] is None
    assert "the instance is registered to host elsewhere" in caplog.text
    assert disk_alias(vid) in {d.alias for d in _virt(tether).list_disks(sid)}  # untouched
    assert _status(cinder, vid) == "available"
    assert vid not in tether.target.exports()


def _boot_from_volume(nova: Api, vid: str, **extra: Any) -> Any:
    return nova.post("/v2.1/servers", {"server": {
        "name": "bfv", "flavorRef": "1", "block_device_mapping_v2": [
            {"boot_index": 0, "uuid": vid, "source_type": "volume",
             "destination_type": "volume", **extra}]}})


def test_boot_from_volume_and_its_root_cannot_be_detached(tether: Tether) -> None:
    nova, cinder = tether.nova(), tether.api()
    vid = tether.create_volume(cinder)["id"]
    res = _boot_from_volume(nova, vid, delete_on_termination=True)
    assert res.status_code == 202, res.text
    sid = res.json["server"]["id"]
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "ACTIVE")
    assert _status(cinder, vid) == "in-use"
    guest = _virt(tether).guests[sid]
    assert guest.spec.root_volume is not None and guest.spec.root_volume.volume_id == vid
    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 400
    assert res.json["badRequest"]["message"] == "Cannot detach a root device volume."
    assert _status(cinder, vid) == "in-use"
    nova.delete(f"/v2.1/servers/{sid}")
    wait_for(lambda: cinder.get(f"/v3/volumes/{vid}").status_code == 404,
             what="root volume deleted with its server")


@pytest.mark.parametrize(("extra", "status"), [
    ({"boot_index": 1}, 400), ({"source_type": "image"}, 400),
    ({"delete_on_termination": "yes"}, 400), ({"uuid": "nope"}, 400),
    ({"uuid": str(uuid.uuid4())}, 404),
])
def test_boot_from_volume_errors(tether: Tether, extra: dict[str, Any], status: int) -> None:
    nova = tether.nova()
    vid = tether.create_volume(tether.api())["id"]
    assert _boot_from_volume(nova, vid, **extra).status_code == status


def test_boot_volume_in_use_is_refused_and_leaves_no_server(tether: Tether) -> None:
    nova, _cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    before = len(nova.get("/v2.1/servers").json["servers"])
    res = _boot_from_volume(nova, vid)
    assert res.status_code == 400 and "in-use" in res.json["badRequest"]["message"]
    assert len(nova.get("/v2.1/servers").json["servers"]) == before


def test_shelve_offloads_at_once_by_default(tether: Tether) -> None:
    nova, cinder, sid, vid = _setup(tether)
    _attach(tether, nova, sid, vid)
    assert nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None}).status_code == 202
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] ==
             "SHELVED_OFFLOADED", what="offloaded")
    assert sid not in _virt(tether).guests
    assert _status(cinder, vid) == "reserved"


def test_a_deleted_servers_actions_are_shown_from_221(tether: Tether) -> None:
    nova = tether.nova()
    sid = tether.create_server(nova)["id"]
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").status_code == 404, what="deleted")
    url = f"/v2.1/servers/{sid}/os-instance-actions"
    assert nova.as_version("2.20").get(url).status_code == 404
    rows = nova.as_version("2.21").get(url).json["instanceActions"]
    assert [r["action"] for r in rows] == ["delete", "create"]
    one = nova.as_version("2.21").get(f"{url}/{rows[0]['request_id']}")
    assert one.status_code == 200 and one.json["instanceAction"]["action"] == "delete"
    other = tether.nova("bob:p2").as_version("2.21")
    assert other.get(url).status_code == 404  # still only the owner's
