"""The Block Storage API end to end over a real database and in-process RPC,
with the fake iSCSI target (the real one is in tests/integration)."""

from __future__ import annotations

import logging
import uuid

import pytest

from tests.harness import INITIATOR_A, INITIATOR_B, Api, Tether, connector

ADMIN = "admin:p1"


# -- discovery and the request pipeline ----------------------------------------

@pytest.mark.parametrize("path", ["/v3", "/v3/"])
def test_version_document_needs_no_auth(tether: Tether, path: str) -> None:
    res = tether.api().client.simulate_get(path)
    assert res.status_code == 200
    v = res.json["version"]
    assert (v["id"], v["status"], v["version"], v["min_version"]) == (
        "v3.0", "CURRENT", "3.71", "3.0")
    assert v["links"][0]["rel"] == "self"


def test_root_lists_versions(tether: Tether) -> None:
    res = tether.api().client.simulate_get("/")
    assert res.status_code == 300
    assert res.json["versions"][0]["id"] == "v3.0"


def test_missing_token_is_401_json(tether: Tether) -> None:
    res = tether.api().client.simulate_get("/v3/volumes")
    assert res.status_code == 401
    assert res.json["unauthorized"]["code"] == 401


def test_microversion_echoed_and_406_outside(tether: Tether) -> None:
    api = tether.api(version="3.44")
    res = api.get("/v3/volumes")
    assert res.headers["OpenStack-API-Version"] == "volume 3.44"
    res = api.get("/v3/volumes", headers={"OpenStack-API-Version": "volume 3.99"})
    assert res.status_code == 406
    assert "notAcceptable" in res.json


def test_project_id_in_url_is_served_and_checked(tether: Tether) -> None:
    api = tether.api()
    assert api.get("/v3/p1/volumes").status_code == 200
    res = api.get("/v3/other/volumes")
    assert res.status_code == 400
    assert "doesn't match" in res.json["badRequest"]["message"]
    assert tether.api(ADMIN).get("/v3/other/volumes").status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/v3/nothing", None, 404),
    ("PATCH", "/v3/volumes", None, 405),
    ("POST", "/v3/volumes", None, 400),
    ("POST", "/v3/volumes", {"volume": {}}, 400),
    ("POST", "/v3/volumes", {"volume": {"size": "big"}}, 400),
    ("POST", "/v3/volumes", {"volume": {"size": 0}}, 400),
    ("POST", "/v3/volumes", {"volume": {"size": True}}, 400),
    ("POST", "/v3/volumes", {"volume": {"size": 1, "metadata": {"a": 1}}}, 400),
    ("POST", "/v3/volumes", {"volume": {"size": 1, "multiattach": "maybe"}}, 400),
    ("POST", "/v3/volumes", {"volume": {"size": 1, "snapshot_id": "x"}}, 400),
    ("POST", "/v3/volumes", {"vol": {"size": 1}}, 400),
    ("GET", "/v3/volumes/not-a-uuid", None, 404),
    ("GET", f"/v3/volumes/{uuid.uuid4()}", None, 404),
    ("DELETE", f"/v3/volumes/{uuid.uuid4()}", None, 404),
    ("GET", f"/v3/attachments/{uuid.uuid4()}", None, 404),
    ("GET", "/v3/volumes?limit=x", None, 400),
    ("POST", "/v3/attachments", {"attachment": {}}, 400),
])
def test_client_errors_are_json_never_500(tether: Tether, method: str, path: str,
                                          body: object, status: int) -> None:
    res = tether.api().request(method, path, body)
    assert res.status_code == status, res.text
    (fault,) = res.json.values()
    assert fault["code"] == status and fault["message"]


def test_malformed_json_is_400(tether: Tether) -> None:
    api = tether.api()
    res = api.client.simulate_post("/v3/volumes", body="{not json", headers={
        "X-Auth-Token": "a:p1", "Content-Type": "application/json"})
    assert res.status_code == 400
    assert "Malformed request body" in res.json["badRequest"]["message"]


# -- volumes --------------------------------------------------------------------

def test_create_show_list_delete(tether: Tether) -> None:
    api = tether.api()
    res = api.post("/v3/volumes", {"volume": {"size": 2, "name": "data", "description": "d",
                                              "metadata": {"k": "v"}}})
    assert res.status_code == 202
    body = res.json["volume"]
    assert body["status"] == "creating" and body["size"] == 2
    vol = tether.create_volume(api, name="data2")
    for key in ("id", "name", "status", "size", "attachments", "metadata", "multiattach",
                "shared_targets", "service_uuid"):
        assert key in vol
    assert vol["attachments"] == [] and vol["shared_targets"] is False
    names = {v["name"] for v in api.get("/v3/volumes").json["volumes"]}
    assert {"data", "data2"} <= names
    detail = api.get("/v3/volumes/detail?name=data2").json["volumes"]
    assert [v["id"] for v in detail] == [vol["id"]]
    assert api.delete(f"/v3/volumes/{vol['id']}").status_code == 202
    from tests.harness import wait_for
    wait_for(lambda: api.get(f"/v3/volumes/{vol['id']}").status_code == 404,
             what="volume gone")


def test_shared_targets_only_from_348(tether: Tether) -> None:
    vol = tether.create_volume(tether.api())
    old = tether.api(version="3.47").get(f"/v3/volumes/{vol['id']}").json["volume"]
    assert "shared_targets" not in old and "service_uuid" not in old


def test_other_projects_volume_is_404(tether: Tether) -> None:
    vol = tether.create_volume(tether.api("alice:p1"), name=f"a-{uuid.uuid4().hex[:8]}")
    bob = tether.api("bob:p2")
    assert bob.get(f"/v3/volumes/{vol['id']}").status_code == 404
    assert bob.delete(f"/v3/volumes/{vol['id']}").status_code == 404
    assert vol["id"] not in {v["id"] for v in bob.get("/v3/volumes").json["volumes"]}
    assert tether.api(ADMIN).get(f"/v3/volumes/{vol['id']}").status_code == 200
    every = tether.api(ADMIN).get("/v3/volumes?all_tenants=1").json["volumes"]
    assert vol["id"] in {v["id"] for v in every}
    # Cinder ignores all_tenants for a non-admin (cinderclient sends it on every
    # lookup by name): bob sees his own project
    res = bob.get(f"/v3/volumes/detail?all_tenants=1&name={vol['name']}")
    assert res.status_code == 200 and res.json["volumes"] == []


def test_update_volume(tether: Tether) -> None:
    api = tether.api()
    vol = tether.create_volume(api)
    res = api.put(f"/v3/volumes/{vol['id']}", {"volume": {"name": "renamed",
                                                          "metadata": {"a": "b"}}})
    assert res.status_code == 200
    assert res.json["volume"]["name"] == "renamed"
    assert res.json["volume"]["metadata"] == {"a": "b"}


# -- attachments (new flow) -------------------------------------------------------

def _attach(api: Api, vid: str, conn: dict[str, object] | None = None,
            server: str | None = None) -> dict[str, object]:
    res = api.post("/v3/attachments", {"attachment": {
        "volume_uuid": vid, "instance_uuid": server or str(uuid.uuid4()), "connector": conn}})
    assert res.status_code == 200, res.text
    return dict(res.json["attachment"])


def test_attachment_lifecycle_exports_and_unexports(tether: Tether) -> None:
    api = tether.api()
    vol = tether.create_volume(api)
    vid = vol["id"]
    att = _attach(api, vid)
    assert att["status"] == "reserved"
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "reserved"
    assert vid not in tether.target.exports()

    res = api.put(f"/v3/attachments/{att['id']}", {"attachment": {"connector": connector()}})
    assert res.status_code == 200, res.text
    info = res.json["attachment"]["connection_info"]
    assert info["driver_volume_type"] == "iscsi"
    assert info["target_iqn"].endswith(f":volume-{vid}")
    assert info["target_lun"] == 1 and info["auth_method"] == "CHAP"
    assert "auth_password" not in info  # a project member never sees the secret
    assert tether.target.exports()[vid].initiators == {INITIATOR_A}
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "attaching"

    res = api.post(f"/v3/attachments/{att['id']}/action", {"os-complete": None})
    assert res.status_code == 204
    vol = api.get(f"/v3/volumes/{vid}").json["volume"]
    assert vol["status"] == "in-use"
    assert vol["attachments"][0]["attachment_id"] == att["id"]
    assert api.get(f"/v3/attachments/{att['id']}").json["attachment"]["status"] == "attached"

    assert api.delete(f"/v3/volumes/{vid}").status_code == 400  # refused while attached

    res = api.delete(f"/v3/attachments/{att['id']}")
    assert res.status_code == 200
    assert res.json["attachments"] == []
    assert vid not in tether.target.exports()
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    assert api.get(f"/v3/attachments/{att['id']}").status_code == 404


def test_secret_only_for_admin_and_service(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    att = _attach(api, vid, connector())
    assert "auth_password" not in att["connection_info"]
    for token in (ADMIN, "test-service-token"):
        info = tether.api(token).get(f"/v3/attachments/{att['id']}").json["attachment"][
            "connection_info"]
        assert len(info["auth_password"]) == 16


def test_chap_secret_never_logged(tether: Tether, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    admin = tether.api(ADMIN)
    vid = tether.create_volume(admin)["id"]
    att = _attach(admin, vid, connector())
    secret = att["connection_info"]["auth_password"]  # type: ignore[index]
    admin.delete(f"/v3/attachments/{att['id']}")
    assert secret not in caplog.text


def test_attachments_need_327_and_complete_344(tether: Tether) -> None:
    vid = tether.create_volume(tether.api())["id"]
    old = tether.api(version="3.26")
    assert old.get("/v3/attachments").status_code == 404
    att = _attach(tether.api(), vid, connector())
    res = tether.api(version="3.43").post(f"/v3/attachments/{att['id']}/action",
                                          {"os-complete": None})
    assert res.status_code == 404


def test_second_attachment_of_plain_volume_refused(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    _attach(api, vid, connector())
    res = api.post("/v3/attachments", {"attachment": {"volume_uuid": vid,
                                                      "instance_uuid": str(uuid.uuid4())}})
    assert res.status_code == 400
    assert "but it is attaching" in res.json["badRequest"]["message"]


def test_multiattach_acl_follows_attachments(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api, multiattach=True)["id"]
    a = _attach(api, vid, connector(INITIATOR_A, "host-a"))
    api.post(f"/v3/attachments/{a['id']}/action", {"os-complete": None})
    b = _attach(api, vid, connector(INITIATOR_B, "host-b"))
    api.post(f"/v3/attachments/{b['id']}/action", {"os-complete": None})
    assert tether.target.exports()[vid].initiators == {INITIATOR_A, INITIATOR_B}
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"
    api.delete(f"/v3/attachments/{a['id']}")
    assert tether.target.exports()[vid].initiators == {INITIATOR_B}
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"
    api.delete(f"/v3/attachments/{b['id']}")
    assert vid not in tether.target.exports()
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"


def test_same_initiator_twice_stays_admitted_until_last(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api, multiattach=True)["id"]
    a = _attach(api, vid, connector())
    api.post(f"/v3/attachments/{a['id']}/action", {"os-complete": None})
    b = _attach(api, vid, connector())
    api.delete(f"/v3/attachments/{a['id']}")
    assert tether.target.exports()[vid].initiators == {INITIATOR_A}
    api.delete(f"/v3/attachments/{b['id']}")
    assert vid not in tether.target.exports()


@pytest.mark.parametrize("conn", [
    {}, {"host": "h"}, {"initiator": "not an iqn"}, {"initiator": "iqn.2026-11.x:a b"}, "x"])
def test_bad_connector_is_400_and_changes_nothing(tether: Tether, conn: object) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    att = _attach(api, vid)
    res = api.put(f"/v3/attachments/{att['id']}", {"attachment": {"connector": conn}})
    assert res.status_code == 400
    assert "connector" in res.json["badRequest"]["message"].lower()
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "reserved"
    assert vid not in tether.target.exports()


def test_target_failure_rolls_back(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    att = _attach(api, vid)
    tether.target.fail_next("export")  # type: ignore[attr-defined]
    res = api.put(f"/v3/attachments/{att['id']}", {"attachment": {"connector": connector()}})
    assert res.status_code == 500
    assert api.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "reserved"
    assert api.get(f"/v3/attachments/{att['id']}").json["attachment"]["status"] == "reserved"
    # and the request can simply be retried
    res = api.put(f"/v3/attachments/{att['id']}", {"attachment": {"connector": connector()}})
    assert res.status_code == 200


def test_attachment_list_and_filters(tether: Tether) -> None:
    api = tether.api()
    vid = tether.create_volume(api)["id"]
    server = str(uuid.uuid4())
    _attach(api, vid, connector(), server=server)
    rows = api.get(f"/v3/attachments?instance_id={server}").json["attachments"]
    assert [r["instance"] for r in rows] == [server]
    detail = api.get("/v3/attachments/detail").json["attachments"]
    assert detail[0]["attach_mode"] == "rw"
    assert tether.api("bob:p2").get("/v3/attachments").json["attachments"] == []
