"""The volume service's reconcile: the target made equal to the database in
one read of each, touching only what differs, and what a crash left (a
volume still creating or deleting, a status a dead request left
contradicting the attachments) finished."""

from __future__ import annotations

from tests.harness import Tether, set_row
from tether.db import models
from tether.volume.targets.fake import FakeTarget


def _target(t: Tether) -> FakeTarget:
    assert isinstance(t.target, FakeTarget)
    return t.target


def test_a_tgtd_restart_is_healed_and_nothing_else_touched(tether: Tether) -> None:
    _nova, _cinder, _sid, vid = tether.server_with_volume()
    manager = tether.embedded.volume.manager
    target = _target(tether)
    before = target.exports()[vid]
    manager.reconcile()
    target.calls.clear()
    assert manager.reconcile().restored == 0
    assert target.calls == []  # every export as wanted: not one request to the target
    target.unexport(vid)  # tgtd restarted: the export (and the guest's session) gone
    target.calls.clear()
    assert manager.reconcile().restored == 1
    assert target.calls == [("export", vid)]
    assert target.exports()[vid] == before


def test_a_changed_acl_is_put_back(tether: Tether) -> None:
    _nova, _cinder, _sid, vid = tether.server_with_volume()
    target = _target(tether)
    target.allow(vid, "iqn.2026-01.org.example:intruder")
    tether.embedded.volume.manager.reconcile()
    assert target.exports()[vid].initiators == {tether.connector.properties().initiator}


def test_volumes_a_crash_left_creating_or_deleting_are_finished(tether: Tether) -> None:
    cinder = tether.api()
    made = tether.create_volume(cinder)["id"]
    gone = tether.create_volume(cinder)["id"]
    set_row(tether.db, models.Volume, made, status="creating", chap_username=None,
            chap_password=None)
    set_row(tether.db, models.Volume, gone, status="deleting")
    result = tether.embedded.volume.manager.reconcile(at_start=True)
    assert (result.created, result.deleted) == (1, 1)
    vol = cinder.get(f"/v3/volumes/{made}").json["volume"]
    assert vol["status"] == "available"
    assert cinder.get(f"/v3/volumes/{gone}").status_code == 404
