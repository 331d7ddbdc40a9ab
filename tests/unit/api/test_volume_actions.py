"""The legacy /volumes/{id}/action flow and the admin actions."""

from __future__ import annotations

import uuid

import pytest

from tests.harness import INITIATOR_A, Api, Tether, connector


def act(api: Api, vid: str, name: str, args: object = None) -> tuple[int, dict[str, object]]:
    res = api.post(f"/v3/volumes/{vid}/action", {name: args if args is not None else {}})
    return res.status_code, (res.json or {})


def status(api: Api, vid: str) -> str:
    return str(api.get(f"/v3/volumes/{vid}").json["volume"]["status"])


def test_legacy_attach_then_detach(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    server = str(uuid.uuid4())
    assert act(api, vid, "os-reserve")[0] == 202
    assert status(api, vid) == "attaching"
    code, body = act(api, vid, "os-initialize_connection", {"connector": connector()})
    assert code == 200
    assert body["connection_info"]["driver_volume_type"] == "iscsi"  # type: ignore[index]
    assert tether.target.exports()[vid].initiators == {INITIATOR_A}
    assert act(api, vid, "os-attach", {"instance_uuid": server, "mountpoint": "/dev/sdb"})[
        0] == 202
    vol = api.get(f"/v3/volumes/{vid}").json["volume"]
    assert vol["status"] == "in-use"
    assert vol["attachments"][0]["server_id"] == server
    assert vol["attachments"][0]["device"] == "/dev/sdb"

    assert act(api, vid, "os-begin_detaching")[0] == 202
    assert status(api, vid) == "detaching"
    assert act(api, vid, "os-roll_detaching")[0] == 202
    assert status(api, vid) == "in-use"
    assert act(api, vid, "os-begin_detaching")[0] == 202
    assert act(api, vid, "os-terminate_connection", {"connector": connector()})[0] == 202
    assert vid not in tether.target.exports()
    assert act(api, vid, "os-detach", {"attachment_id": vol["attachments"][0][
        "attachment_id"]})[0] == 202
    assert status(api, vid) == "available"


def test_unreserve(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    act(api, vid, "os-reserve")
    assert act(api, vid, "os-unreserve")[0] == 202
    assert status(api, vid) == "available"
    code, body = act(api, vid, "os-unreserve")
    assert code == 400 and "but it is available" in str(body)


@pytest.mark.parametrize("action", ["os-begin_detaching", "os-roll_detaching"])
def test_detaching_actions_refused_on_available(tether: Tether, action: str) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    code, body = act(api, vid, action)
    assert code == 400
    assert "but it is available" in body["badRequest"]["message"]  # type: ignore[index]


def test_roll_detaching_is_idempotent_on_in_use(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    act(api, vid, "os-reserve")
    act(api, vid, "os-attach", {"instance_uuid": str(uuid.uuid4())})
    assert act(api, vid, "os-roll_detaching")[0] == 202
    assert status(api, vid) == "in-use"


def test_reserve_twice_refused(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    act(api, vid, "os-reserve")
    code, body = act(api, vid, "os-reserve")
    assert code == 400 and "but it is attaching" in str(body)


@pytest.mark.parametrize(("name", "args"), [
    ("os-fly", {}), ("os-attach", {}), ("os-attach", {"instance_uuid": "x", "mode": "rx"}),
    ("os-initialize_connection", {}), ("os-terminate_connection", {"connector": {}}),
])
def test_bad_actions_are_400(tether: Tether, name: str, args: object) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    assert act(api, vid, name, args)[0] == 400


def test_initialize_connection_needs_reservation(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    code, body = act(api, vid, "os-initialize_connection", {"connector": connector()})
    assert code == 400 and "but it is available" in str(body)


def test_reset_status_admin_only(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    assert act(api, vid, "os-reset_status", {"status": "error"})[0] == 403
    admin = tether.api("admin:p1")
    assert act(admin, vid, "os-reset_status", {"status": "error"})[0] == 202
    assert status(api, vid) == "error"
    assert act(admin, vid, "os-reset_status", {"status": "bogus"})[0] == 400


def test_force_detach_removes_everything(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    res = api.post("/v3/attachments", {"attachment": {
        "volume_uuid": vid, "instance_uuid": str(uuid.uuid4()), "connector": connector()}})
    att = res.json["attachment"]
    api.post(f"/v3/attachments/{att['id']}/action", {"os-complete": None})
    act(api, vid, "os-begin_detaching")
    assert act(api, vid, "os-force_detach", {})[0] == 403
    assert act(tether.api("admin:p1"), vid, "os-force_detach", {})[0] == 202
    assert status(api, vid) == "available"
    assert vid not in tether.target.exports()
