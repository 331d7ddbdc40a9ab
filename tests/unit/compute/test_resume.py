"""A compute service that died mid-operation finishes or undoes it on start:
an interrupted detach is run again (its steps are idempotent), an
interrupted attach is rolled back.  No volume stays detaching or attaching."""

from __future__ import annotations

import datetime as dt

from tests.harness import Tether
from tether.context import RequestContext
from tether.db import models
from tether.virt.driver import disk_alias
from tether.virt.fake import FakeDriver


def test_interrupted_detach_is_finished_on_start(tether: Tether) -> None:
    _nova, cinder, sid, vid = tether.server_with_volume()
    # the API did its part (begin_detaching, action, s1) and the host died
    # before running the cast
    ctx = RequestContext("alice", "p1")
    cinder_admin = tether.api("admin:p1")
    cinder_admin.post(f"/v3/volumes/{vid}/action", {"os-begin_detaching": {}})
    ops = tether.embedded.api.compute_api.ops
    action = ops.start_action(ctx, sid, "detach_volume", vid)
    with ops.step(action, "s1:compute_api"):
        pass
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "detaching"

    assert tether.embedded.compute.manager.resume_unfinished() == 1

    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    virt = tether.virt
    assert isinstance(virt, FakeDriver)
    assert disk_alias(vid) not in {d.alias for d in virt.list_disks(sid)}
    with tether.db.session() as s:
        row = s.get(models.InstanceAction, action.id)
        assert row is not None and row.finish_time is not None and row.message is None
    assert tether.embedded.compute.manager.resume_unfinished() == 0


def test_interrupted_attach_is_rolled_back_on_start(tether: Tether) -> None:
    nova, cinder, sid, vid = tether.server_with_volume()
    # pretend the attach never finished: the action is still open
    with tether.db.session() as s:
        row = s.query(models.InstanceAction).filter_by(
            instance_uuid=sid, action="attach_volume").one()
        row.finish_time = None

    assert tether.embedded.compute.manager.resume_unfinished() == 1

    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    assert vid not in tether.target.exports()
    assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
        "volumeAttachments"] == []
    with tether.db.session() as s:
        row = s.query(models.InstanceAction).filter_by(
            instance_uuid=sid, action="attach_volume").one()
        assert row.finish_time is not None and row.message == "Error"


def _lost_detach(t: Tether, age_s: float) -> tuple[str, str, int]:
    """A detach the API cast and nobody ran (the message was lost)."""
    _nova, _cinder, sid, vid = t.server_with_volume()
    t.api("admin:p1").post(f"/v3/volumes/{vid}/action", {"os-begin_detaching": {}})
    ops = t.embedded.api.compute_api.ops
    action = ops.start_action(RequestContext("alice", "p1"), sid, "detach_volume", vid)
    with t.db.session() as s:
        row = s.get(models.InstanceAction, action.id)
        assert row is not None
        row.start_time = models.utcnow() - dt.timedelta(seconds=age_s)
    return sid, vid, action.id


def test_sweeper_finishes_old_lost_operations_only(tether: Tether) -> None:
    manager = tether.embedded.compute.manager
    _, old_vid, _ = _lost_detach(tether, age_s=3600)
    _, new_vid, new_id = _lost_detach(tether, age_s=1)
    assert manager.resume_unfinished(older_than=600) == 1
    cinder = tether.api()
    assert cinder.get(f"/v3/volumes/{old_vid}").json["volume"]["status"] == "available"
    assert cinder.get(f"/v3/volumes/{new_vid}").json["volume"]["status"] == "detaching"
    # one this process is working on right now is never swept, however old
    with tether.db.session() as s:
        row = s.get(models.InstanceAction, new_id)
        assert row is not None
        row.start_time = models.utcnow() - dt.timedelta(hours=1)
    with manager._running(new_id):
        assert manager.resume_unfinished(older_than=600) == 0
    assert manager.resume_unfinished(older_than=600) == 1
    assert cinder.get(f"/v3/volumes/{new_vid}").json["volume"]["status"] == "available"
