"""Shelve, shelveOffload, unshelve, and detaching from a shelved or
offloaded server (microversion 2.20)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import Api, Tether, wait_for
from tether.connectors.fake import FakeConnector
from tether.virt.driver import disk_alias
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tether]:
    t = Tether(str(tmp_path_factory.mktemp("shelve")), FakeTarget(), FakeDriver(),
               FakeConnector(), overrides={"compute": {"shelved_offload_time": -1}})
    try:
        yield t
    finally:
        t.stop()


def _status(api: Api, path: str, key: str) -> str:
    return str(api.get(path).json[key]["status"])




def _act(t: Tether, nova: Api, sid: str, name: str, status: str) -> None:
    assert nova.post(f"/v2.1/servers/{sid}/action", {name: None}).status_code == 202
    wait_for(lambda: _status(nova, f"/v2.1/servers/{sid}", "server") == status,
             what=f"{name} -> {status}")


def test_detach_from_shelved_server(tether: Tether) -> None:
    nova, cinder, sid, vid = tether.server_with_volume()
    _act(tether, nova, sid, "shelve", "SHELVED")
    url = f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
    assert nova.as_version("2.19").delete(url).status_code == 409
    assert nova.as_version("2.20").delete(url).status_code == 202
    action = tether.wait_action(nova, sid, "detach_volume")
    assert not action["message"]
    assert _status(cinder, f"/v3/volumes/{vid}", "volume") == "available"
    virt = tether.virt
    assert isinstance(virt, FakeDriver)
    assert disk_alias(vid) not in {d.alias for d in virt.list_disks(sid, live=False)}


def test_offloaded_server_keeps_volumes_reserved_and_unshelves_them(tether: Tether) -> None:
    nova, cinder, sid, vid = tether.server_with_volume()
    _act(tether, nova, sid, "shelve", "SHELVED")
    _act(tether, tether.nova("admin:p1"), sid, "shelveOffload", "SHELVED_OFFLOADED")
    virt, connector = tether.virt, tether.connector
    assert isinstance(virt, FakeDriver) and isinstance(connector, FakeConnector)
    assert sid not in virt.guests
    assert ("disconnect", vid) in connector.calls
    assert vid not in tether.target.exports()  # nothing exported while offloaded
    assert _status(cinder, f"/v3/volumes/{vid}", "volume") == "reserved"
    assert nova.get(f"/v2.1/servers/{sid}").json["server"]["OS-EXT-STS:vm_state"] == \
        "shelved_offloaded"

    _act(tether, nova, sid, "unshelve", "ACTIVE")
    assert _status(cinder, f"/v3/volumes/{vid}", "volume") == "in-use"
    assert disk_alias(vid) in {d.alias for d in virt.list_disks(sid)}
    assert vid in tether.target.exports()


def test_detach_from_offloaded_server_does_no_hypervisor_work(tether: Tether) -> None:
    nova, cinder, sid, vid = tether.server_with_volume()
    _act(tether, nova, sid, "shelve", "SHELVED")
    _act(tether, tether.nova("admin:p1"), sid, "shelveOffload", "SHELVED_OFFLOADED")
    connector = tether.connector
    assert isinstance(connector, FakeConnector)
    calls_before = list(connector.calls)
    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 202
    action = tether.wait_action(nova, sid, "detach_volume")
    assert [e["event"] for e in action["events"]] == ["s1:compute_api",
                                                      "s1.2+s1.3:attachment_delete"]
    assert connector.calls == calls_before  # no host work at all
    assert _status(cinder, f"/v3/volumes/{vid}", "volume") == "available"
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []


def test_shelve_offload_is_admin_only_and_state_checked(tether: Tether) -> None:
    nova, _, sid, _ = tether.server_with_volume()
    assert nova.post(f"/v2.1/servers/{sid}/action", {"shelveOffload": None}).status_code == 403
    assert nova.post(f"/v2.1/servers/{sid}/action", {"unshelve": None}).status_code == 409


def test_an_offloaded_server_is_deleted_by_the_api_with_its_volumes(tether: Tether) -> None:
    """No host has the server: the API releases its volumes itself (Nova's
    local delete) and the server is gone when the request returns."""
    nova, cinder, sid, vid = tether.server_with_volume()
    kept = tether.create_volume(cinder)["id"]
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": kept, "delete_on_termination": True}})
    assert res.status_code == 200, res.text
    tether.wait_action(nova, sid, "attach_volume")
    _act(tether, nova, sid, "shelve", "SHELVED")
    _act(tether, tether.nova("admin:p1"), sid, "shelveOffload", "SHELVED_OFFLOADED")
    connector = tether.connector
    assert isinstance(connector, FakeConnector)
    calls_before = list(connector.calls)

    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    assert nova.get(f"/v2.1/servers/{sid}").status_code == 404
    assert _status(cinder, f"/v3/volumes/{vid}", "volume") == "available"
    wait_for(lambda: cinder.get(f"/v3/volumes/{kept}").status_code == 404,
             what="the delete_on_termination volume deleted")  # the volume service's work
    assert connector.calls == calls_before  # no host work
    assert cinder.get(f"/v3/attachments?volume_id={vid}").json["attachments"] == []
    action = tether.wait_action(tether.nova("admin:p1"), sid, "delete")
    assert not action["message"]
    assert sorted(e["event"] for e in action["events"]) == sorted(
        [f"detach_volume:{vid}", f"detach_volume:{kept}"])


def test_a_hosts_start_removes_the_files_of_deleted_servers(tether: Tether) -> None:
    nova = tether.nova()
    live = tether.create_server(nova)["id"]
    gone = tether.create_server(nova)["id"]
    assert nova.delete(f"/v2.1/servers/{gone}").status_code == 204
    wait_for(lambda: nova.get(f"/v2.1/servers/{gone}").status_code == 404, what="deleted")
    manager = tether.embedded.compute.manager
    unknown = "0b0b0b0b-0000-4000-8000-000000000000"
    for name in (live, gone, unknown, "not-a-server"):
        os.makedirs(manager.images.instance_dir(name), exist_ok=True)
    assert sorted(manager.prune_instance_files()) == sorted([gone, unknown])
    left = set(os.listdir(manager.images.instances_dir))
    assert {live, "not-a-server"} <= left and not {gone, unknown} & left
