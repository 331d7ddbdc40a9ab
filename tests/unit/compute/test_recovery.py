"""Operations a crash interrupted are finished or undone (docs/recovery.md),
with the fake drivers.  A crash is the fault point of a step (``tether.faults``)
stopping the flow where a kill -9 would, without any of its error handling;
the process's death is the operation's owner no longer being alive.  The same
points kill a real ``tether serve`` in tests/integration/test_crash_recovery.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.harness import Tether, bdm_of, db_rows, queued, queued_detach, run_on_host, set_row
from tether import faults
from tether.connectors.fake import FakeConnector
from tether.db import models
from tether.virt.driver import disk_alias
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


class Crash(BaseException):
    """Where the process died (no ``except Exception`` catches it)."""


@pytest.fixture
def tether(tmp_path: object) -> Iterator[Tether]:
    t = Tether(str(tmp_path), FakeTarget(), FakeDriver(), FakeConnector())
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def crash_at(monkeypatch: pytest.MonkeyPatch) -> object:
    def arm(*points: str) -> None:
        monkeypatch.setattr(faults, "_patterns", points)

        def die(name: str) -> None:
            monkeypatch.setattr(faults, "_patterns", ())
            raise Crash(name)

        monkeypatch.setattr(faults, "_die", die)
    return arm


def _died(t: Tether, action_id: int) -> None:
    """The process that owned the operation is gone."""
    set_row(t.db, models.InstanceAction, action_id, owner=str(uuid.uuid4()))


def _action(t: Tether, action_id: int) -> object:
    (row,) = db_rows(t.db, models.InstanceAction, id=action_id)
    return row


def _host_dies(t: Tether, crash_at: object, sid: str, action: str, point: str) -> int:
    """The host runs the server's (queued) ``action`` and the process dies at
    ``point``: its operation's owner is gone.  The operation's id."""
    (row,) = db_rows(t.db, models.InstanceAction, instance_uuid=sid, action=action)
    crash_at(point)  # type: ignore[operator]
    with pytest.raises(Crash):
        run_on_host(t, sid, row.id)
    _died(t, row.id)
    return int(row.id)


def _volume(t: Tether, vid: str) -> str:
    return str(t.api().get(f"/v3/volumes/{vid}").json["volume"]["status"])


def _recover(t: Tether) -> int:
    return t.embedded.compute.recovery.run(at_start=True)


def _no_cast(t: Tether, monkeypatch: pytest.MonkeyPatch) -> None:
    """Casts are lost: the test runs the host's side itself."""
    monkeypatch.setattr(t.embedded.api.compute_api.rpcapi, "run_operation",
                        lambda *a, **k: None)


# -- detach ------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["s1.1:driver_detach:start", "s1.1.1:guest_device_removal:end",
                                   "s2:host_disconnect:end",
                                   "s1.2+s1.3:attachment_delete:start",
                                   "s1.2+s1.3:attachment_delete:end"])
def test_a_detach_that_died_anywhere_on_the_host_is_finished(
        tether: Tether, crash_at: object, point: str) -> None:
    _nova, _cinder, sid, vid = tether.server_with_volume()
    action_id = queued_detach(tether, sid, vid)
    crash_at(point)  # type: ignore[operator]
    with pytest.raises(Crash):
        run_on_host(tether, sid, action_id)
    _died(tether, action_id)
    assert _recover(tether) == 1
    assert _volume(tether, vid) == "available"
    assert vid not in tether.target.exports()
    assert not tether.virt.has_chap_secret(vid)
    assert disk_alias(vid) not in {d.alias for d in tether.virt.list_disks(sid, live=False)}
    row = _action(tether, action_id)
    assert (row.status, row.message) == ("succeeded", None)  # type: ignore[attr-defined]
    assert _recover(tether) == 0


def test_a_queued_detach_nobody_ran_is_run_at_start(tether: Tether) -> None:
    _nova, _cinder, sid, vid = tether.server_with_volume()
    action_id = queued_detach(tether, sid, vid)  # the host died before the message came
    assert _recover(tether) == 1
    assert _volume(tether, vid) == "available"
    # the message arriving afterwards does nothing
    assert not run_on_host(tether, sid, action_id)


def test_the_sweeper_runs_only_old_lost_operations(tether: Tether) -> None:
    recovery = tether.embedded.compute.recovery
    _nova, _cinder, sid, vid = tether.server_with_volume()
    action_id = queued_detach(tether, sid, vid)
    assert recovery.run() == 0  # too young: its message may still come
    long_ago = models.utcnow().replace(year=2000)
    set_row(tether.db, models.InstanceAction, action_id, start_time=long_ago,
            updated_at=long_ago)
    manager = tether.embedded.compute.manager
    with manager.in_flight.running(action_id):  # a thread of this process has it
        assert recovery.run() == 0
    assert recovery.run() == 1
    assert _volume(tether, vid) == "available"


# -- attach ------------------------------------------------------------------------

@pytest.mark.parametrize("point", ["a1.1:attachment_update:end", "a2:host_connect:end",
                                   "a1.1.1:guest_device_add:end",
                                   "a1.3:attachment_complete:start"])
def test_an_attach_that_died_on_the_host_is_rolled_back(
        tether: Tether, crash_at: object, point: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = tether.create_server(nova)["id"]
    vid = tether.create_volume(cinder)["id"]
    _no_cast(tether, monkeypatch)
    assert nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                     {"volumeAttachment": {"volumeId": vid}}).status_code == 200
    row_id = _host_dies(tether, crash_at, sid, "attach_volume", point)
    assert _recover(tether) == 1
    assert _volume(tether, vid) == "available"
    assert vid not in tether.target.exports()
    assert not tether.virt.has_chap_secret(vid)  # the host connection is undone too
    assert vid not in tether.connector.connected  # type: ignore[attr-defined]
    assert tether.virt.list_disks(sid, live=False) == []
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []
    done = _action(tether, row_id)
    assert (done.status, done.message) == ("failed", "Error")  # type: ignore[attr-defined]
    # and the volume can be attached again at once
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200 and res.json["volumeAttachment"]["device"] == "/dev/sdb"


def test_an_attach_that_died_after_its_last_step_is_finished(
        tether: Tether, crash_at: object, monkeypatch: pytest.MonkeyPatch) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = tether.create_server(nova)["id"]
    vid = tether.create_volume(cinder)["id"]
    _no_cast(tether, monkeypatch)
    nova.post(f"/v2.1/servers/{sid}/os-volume_attachments", {"volumeAttachment": {
        "volumeId": vid}})
    row_id = _host_dies(tether, crash_at, sid, "attach_volume", "a1.3:attachment_complete:end")
    assert _recover(tether) == 1
    assert _volume(tether, vid) == "in-use"
    assert _action(tether, row_id).status == "succeeded"  # type: ignore[attr-defined]


@pytest.mark.parametrize("point", ["a1:compute_api:start", "a1:compute_api:end"])
def test_an_attach_whose_api_process_died_is_undone_by_another(
        tether: Tether, crash_at: object, point: str) -> None:
    """Before the reservation is recorded on the mapping, or after: either
    way the reservation goes (found by what the mapping does not record)."""
    nova, cinder = tether.nova(), tether.api()
    sid = tether.create_server(nova)["id"]
    vid = tether.create_volume(cinder)["id"]
    crash_at(point)  # type: ignore[operator]
    with pytest.raises(Crash):
        nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                  {"volumeAttachment": {"volumeId": vid}})
    (row,) = db_rows(tether.db, models.InstanceAction, instance_uuid=sid, action="attach_volume")
    assert row.status == "api"
    _died(tether, row.id)
    assert tether.embedded.api.recovery.run() == 1
    assert _volume(tether, vid) == "available"
    assert tether.api("admin:p1").get(f"/v3/attachments?all_tenants=1&volume_id={vid}"
                                      ).json["attachments"] == []
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []
    assert _action(tether, row.id).status == "failed"  # type: ignore[attr-defined]


def test_a_detach_whose_api_process_died_rolls_back(
        tether: Tether, crash_at: object) -> None:
    nova, _cinder, sid, vid = tether.server_with_volume()
    crash_at("s1:compute_api:end")  # type: ignore[operator]  # after begin_detaching
    with pytest.raises(Crash):
        nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert _volume(tether, vid) == "detaching"
    (row,) = db_rows(tether.db, models.InstanceAction, instance_uuid=sid, action="detach_volume")
    _died(tether, row.id)
    assert tether.embedded.api.recovery.run() == 1
    assert _volume(tether, vid) == "in-use"
    assert disk_alias(vid) in {d.alias for d in tether.virt.list_disks(sid)}
    assert _action(tether, row.id).message == "Error"  # type: ignore[attr-defined]
    # a live API's own operation is left alone
    assert tether.embedded.api.recovery.run() == 0


def test_a_cast_that_fails_is_undone_and_answered_503(
        tether: Tether, monkeypatch: pytest.MonkeyPatch) -> None:
    nova, _cinder, sid, vid = tether.server_with_volume()

    def broken(*_a: object, **_k: object) -> None:
        raise OSError("broker unreachable")

    monkeypatch.setattr(tether.embedded.api.compute_api.rpcapi, "run_operation", broken)
    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 503 and "nothing was changed" in res.text
    assert _volume(tether, vid) == "in-use"
    other = tether.create_volume(tether.api())["id"]
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": other}})
    assert res.status_code == 503
    assert _volume(tether, other) == "available"
    assert len(nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"]) == 1


# -- servers -----------------------------------------------------------------------

def test_a_stop_whose_host_died_is_run_at_start(tether: Tether,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    nova = tether.nova()
    sid = tether.create_server(nova)["id"]
    _no_cast(tether, monkeypatch)
    assert nova.post(f"/v2.1/servers/{sid}/action", {"os-stop": None}).status_code == 202
    assert nova.get(f"/v2.1/servers/{sid}").json["server"][
        "OS-EXT-STS:task_state"] == "powering-off"
    assert _recover(tether) == 1
    srv = nova.get(f"/v2.1/servers/{sid}").json["server"]
    assert (srv["status"], srv["OS-EXT-STS:task_state"]) == ("SHUTOFF", None)


@pytest.mark.parametrize("point", ["destroy_guest:end", "detach_volume:*:start",
                                   "detach_volume:*:end"])
def test_a_delete_that_died_is_finished(tether: Tether, crash_at: object,
                                        monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    nova, _cinder, sid, vid = tether.server_with_volume()
    set_row(tether.db, models.BlockDeviceMapping, bdm_of(tether.db, sid, vid).id,
            delete_on_termination=True)
    _no_cast(tether, monkeypatch)
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    row_id = _host_dies(tether, crash_at, sid, "delete", point)
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204  # under way: nothing new
    assert _recover(tether) == 1
    assert _action(tether, row_id).status == "succeeded"  # type: ignore[attr-defined]
    assert nova.get(f"/v2.1/servers/{sid}").status_code == 404
    assert tether.api().get(f"/v3/volumes/{vid}").status_code in (200, 404)
    assert sid not in tether.virt.guests  # type: ignore[attr-defined]
    assert vid not in tether.target.exports()


def test_a_detach_during_a_delete_is_409(tether: Tether,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    nova, _cinder, sid, vid = tether.server_with_volume()
    _no_cast(tether, monkeypatch)
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 409
    assert "task_state deleting" in res.json["conflictingRequest"]["message"]
    other = tether.create_volume(tether.api())["id"]
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": other}})
    assert res.status_code == 409
    assert _recover(tether) == 1
    assert nova.get(f"/v2.1/servers/{sid}").status_code == 404


def test_a_shelve_that_died_mid_offload_is_finished(
        tether: Tether, crash_at: object, monkeypatch: pytest.MonkeyPatch) -> None:
    nova, cinder, sid, vid = tether.server_with_volume()
    _no_cast(tether, monkeypatch)
    assert nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None}).status_code == 202
    row_id = _host_dies(tether, crash_at, sid, "shelve", "release_volume:*:end")
    assert _recover(tether) == 1
    assert _action(tether, row_id).status == "succeeded"  # type: ignore[attr-defined]
    srv = nova.get(f"/v2.1/servers/{sid}").json["server"]
    assert (srv["status"], srv["OS-EXT-STS:task_state"]) == ("SHELVED_OFFLOADED", None)
    atts = tether.api("admin:p1").get(f"/v3/attachments?all_tenants=1&volume_id={vid}").json[
        "attachments"]
    assert len(atts) == 1 and atts[0]["status"] == "reserved"  # one, connector-less
    assert vid not in tether.target.exports()
    assert _volume(tether, vid) in ("reserved", "in-use")
    del cinder


def test_an_unknown_operation_ends_in_error(tether: Tether) -> None:
    sid = tether.create_server(tether.nova())["id"]
    action_id = queued(tether, sid, "rebuild")
    assert run_on_host(tether, sid, action_id)
    assert _action(tether, action_id).message == "Error"  # type: ignore[attr-defined]


@pytest.mark.parametrize("point", ["spawn:end", "reattach_volume:*:start",
                                   "reattach_volume:*:end"])
def test_an_unshelve_that_died_after_the_spawn_reconnects_the_volumes(
        tether: Tether, crash_at: object, monkeypatch: pytest.MonkeyPatch,
        point: str) -> None:
    nova, _cinder, sid, vid = tether.server_with_volume()
    assert nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None}).status_code == 202
    tether.wait_action(nova, sid, "shelve")
    _no_cast(tether, monkeypatch)
    assert nova.post(f"/v2.1/servers/{sid}/action", {"unshelve": None}).status_code == 202
    row_id = _host_dies(tether, crash_at, sid, "unshelve", point)
    assert _recover(tether) == 1
    assert _action(tether, row_id).status == "succeeded"  # type: ignore[attr-defined]
    srv = nova.get(f"/v2.1/servers/{sid}").json["server"]
    assert (srv["status"], srv["OS-EXT-STS:task_state"]) == ("ACTIVE", None)
    assert _volume(tether, vid) == "in-use"
    assert disk_alias(vid) in {d.alias for d in tether.virt.list_disks(sid)}
    assert vid in tether.target.exports()


def test_two_server_operations_at_once_one_is_refused(
        tether: Tether, monkeypatch: pytest.MonkeyPatch) -> None:
    """A task is taken in one conditional UPDATE: while a stop is under way a
    second stop, a shelve or a start is a 409 naming the task, a delete takes
    the server anyway (it waits on the host for the stop) and a second delete
    records nothing new."""
    nova = tether.nova()
    sid = tether.create_server(nova)["id"]
    _no_cast(tether, monkeypatch)
    act = f"/v2.1/servers/{sid}/action"
    assert nova.post(act, {"os-stop": None}).status_code == 202
    for body, why in (({"os-stop": None}, "task_state powering-off"),
                      ({"shelve": None}, "task_state powering-off"),
                      ({"os-start": None}, "vm_state active")):
        res = nova.post(act, body)
        assert res.status_code == 409, body
        assert why in res.json["conflictingRequest"]["message"]
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    assert nova.delete(f"/v2.1/servers/{sid}").status_code == 204
    actions = [r.action for r in db_rows(tether.db, models.InstanceAction, instance_uuid=sid)]
    assert sorted(actions) == ["create", "delete", "stop"]
    assert _recover(tether) == 2  # both queued, the host died: stop then delete
    assert nova.get(f"/v2.1/servers/{sid}").status_code == 404
