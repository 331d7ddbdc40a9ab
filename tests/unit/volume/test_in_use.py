"""CVE-2023-2088 on every path: no storage-side detach of an attachment a
server still uses, unless Tether's services ask (VolumeAPI.check_not_in_use)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness import Api, Tether, connector, db_rows, set_row, wait_for
from tether.db import models

SERVICE = "test-service-token"


def act(api: Api, vid: str, name: str, args: object) -> Any:
    return api.post(f"/v3/volumes/{vid}/action", {name: args})


def _attachment(t: Tether, cinder: Api, vid: str) -> dict[str, Any]:
    """The volume's one attachment, with the connector of its host."""
    (att,) = cinder.get(f"/v3/attachments/detail?volume_id={vid}").json["attachments"]
    (initiator,) = t.target.exports()[vid].initiators
    return {**att, "connector": connector(initiator, "testhost")}


def _intact(t: Tether, cinder: Api, vid: str, att: dict[str, Any]) -> None:
    """Nothing changed: in use, the attachment live, the target and its ACL."""
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"
    assert _attachment(t, cinder, vid)["id"] == att["id"]
    assert t.target.exports()[vid].initiators == {att["connector"]["initiator"]}


def _member_paths(cinder: Api, vid: str, att: dict[str, Any]) -> list[Any]:
    return [
        lambda: cinder.delete(f"/v3/attachments/{att['id']}"),
        lambda: act(cinder, vid, "os-detach", {"attachment_id": att["id"]}),
        lambda: act(cinder, vid, "os-detach", {}),
        lambda: act(cinder, vid, "os-terminate_connection", {"connector": att["connector"]}),
    ]


def _admin_paths(admin: Api, vid: str, att: dict[str, Any]) -> list[Any]:
    return [
        lambda: act(admin, vid, "os-force_detach", {}),
        lambda: act(admin, vid, "os-force_detach", {"attachment_id": att["id"]}),
        lambda: act(admin, vid, "os-reset_status", {"attach_status": "detached"}),
        lambda: act(admin, vid, "os-reset_status", {"status": "available"}),
        lambda: admin.delete(f"/v3/attachments/{att['id']}"),
    ]


def test_every_storage_side_detach_of_a_used_attachment_is_409(tether: Tether) -> None:
    _nova, cinder, sid, vid = tether.server_with_volume()
    att = _attachment(tether, cinder, vid)
    admin = tether.api("admin:p1")
    for call in [*_member_paths(cinder, vid, att), *_admin_paths(admin, vid, att)]:
        res = call()
        assert res.status_code == 409, res.text
        assert f"/servers/{sid}/os-volume_attachments/{vid}" in res.json[
            "conflictingRequest"]["message"]
        _intact(tether, cinder, vid, att)


def test_a_volume_reset_to_error_under_a_guest_cannot_be_deleted(tether: Tether) -> None:
    _, cinder, _, vid = tether.server_with_volume()
    admin = tether.api("admin:p1")
    assert act(admin, vid, "os-reset_status", {"status": "error"}).status_code == 202
    res = cinder.delete(f"/v3/volumes/{vid}")
    assert res.status_code == 400 and "connected attachments" in res.text
    assert vid in tether.target.exports()


@pytest.mark.parametrize("path", ["delete", "os-detach", "os-terminate_connection",
                                  "os-force_detach"])
def test_the_service_role_may(tether: Tether, path: str) -> None:
    _, cinder, _, vid = tether.server_with_volume()
    att = _attachment(tether, cinder, vid)
    svc = tether.api(SERVICE)
    res = {"delete": lambda: svc.delete(f"/v3/attachments/{att['id']}"),
           "os-detach": lambda: act(svc, vid, "os-detach", {"attachment_id": att["id"]}),
           "os-terminate_connection": lambda: act(
               svc, vid, "os-terminate_connection", {"connector": att["connector"]}),
           "os-force_detach": lambda: act(svc, vid, "os-force_detach", {})}[path]()
    assert res.status_code in (200, 202), res.text
    assert vid not in tether.target.exports()


def test_compute_detach_works(tether: Tether) -> None:
    nova, cinder, sid, vid = tether.server_with_volume()
    assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}").status_code == 202
    wait_for(lambda: cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available",
             what="volume available")
    assert vid not in tether.target.exports()


def test_an_attachment_of_a_server_being_deleted_is_not_in_use(tether: Tether) -> None:
    _, cinder, sid, vid = tether.server_with_volume()
    att = _attachment(tether, cinder, vid)
    set_row(tether.db, models.Instance, sid, task_state="deleting")
    try:
        assert cinder.delete(f"/v3/attachments/{att['id']}").status_code == 200
    finally:
        set_row(tether.db, models.Instance, sid, task_state=None)
    assert vid not in tether.target.exports()


def test_an_attachment_compute_does_not_hold_is_not_in_use(tether: Tether) -> None:
    """Compute records another attachment of the volume for the server (as
    Cinder: a mismatch is not this attachment's use)."""
    _, cinder, _, vid = tether.server_with_volume()
    att = _attachment(tether, cinder, vid)
    (bdm,) = db_rows(tether.db, models.BlockDeviceMapping, volume_id=vid, deleted=False)
    set_row(tether.db, models.BlockDeviceMapping, bdm.id,
            attachment_id="00000000-0000-4000-8000-000000000000")
    assert cinder.delete(f"/v3/attachments/{att['id']}").status_code == 200


def test_a_detach_racing_the_check_finds_the_attachment_gone(tether: Tether) -> None:
    """Two at once: while compute is asked about the member's delete, the
    service deletes the attachment; the member's then answers 404 and nothing
    is detached twice."""
    _, cinder, _, vid = tether.server_with_volume()
    att = _attachment(tether, cinder, vid)
    api = tether.embedded.api.volume_api
    asked = api.in_use

    def service_wins(server: str, volume: str, attachment: str) -> bool:
        assert tether.api(SERVICE).delete(f"/v3/attachments/{attachment}").status_code == 200
        return False

    api.in_use = service_wins
    try:
        res = cinder.delete(f"/v3/attachments/{att['id']}")
    finally:
        api.in_use = asked
    assert res.status_code == 404, res.text
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    assert vid not in tether.target.exports()
