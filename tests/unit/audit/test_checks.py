"""``tether audit``'s database checks with the fakes: operations, server tasks,
volume statuses, mappings and attachments; each found, repaired or left."""

from __future__ import annotations

import uuid

import pytest

from tests.harness import (
    Tether,
    bdm_of,
    queued,
    queued_detach,
    set_row,
)
from tests.unit.audit.conftest import (
    LONG_AGO,
    drifts,
    left,
    repaired,
    report,
    run,
)
from tether.compute.repository import ComputeRepository
from tether.db import models

# -- 1. operations -------------------------------------------------------------------

def test_operation_in_progress_is_not_drift_and_hides_what_it_touches(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    action_id = queued_detach(t, sid, vid)  # queued for the host, not yet run
    t.target.lose_everything()  # what it touches may disagree meanwhile
    t.virt.undefine_chap_secret(vid)
    doc = report(t)
    assert doc["exit_code"] == 0 and drifts(doc) == {}
    (busy,) = doc["findings"]
    assert (busy["state"], busy["kind"], busy["resource"]) == (
        "in-progress", "operation", f"operation {action_id}")
    assert busy["detail"].startswith(f"detach_volume of volume {vid} on server {sid}: queued")
    _rc, out, _ = run(t)
    assert out.splitlines()[0].startswith(f"IN-PROGRESS  operation             operation "
                                          f"{action_id}: detach_volume")
    assert out.splitlines()[-1] == ("audit: no drift (1 server, 1 domain, 1 volume); "
                                    "1 in progress (not drift)")


def test_queued_operation_older_than_the_timeout_is_drift(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    action_id = queued_detach(t, sid, vid)
    set_row(t.db, models.InstanceAction, action_id, start_time=LONG_AGO, updated_at=LONG_AGO)
    finding = left(t, "stale-operation")
    assert finding["resource"] == f"operation {action_id}"
    assert "queued" in finding["detail"] and "never taken" in finding["detail"]
    assert "compute service of host testhost recovers it" in finding["advice"]


@pytest.mark.parametrize(("status", "who"), [("running", "compute service of host testhost"),
                                             ("api", "an API process takes it over")])
def test_operation_whose_owner_died_is_drift_left_to_its_recovery(
        t: Tether, status: str, who: str) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    action_id = queued_detach(t, sid, vid)
    dead = str(uuid.uuid4())
    set_row(t.db, models.InstanceAction, action_id, status=status, owner=dead)
    finding = left(t, "stale-operation")
    assert f"{status} under owner {dead}, which is no longer alive" in finding["detail"]
    assert who in finding["advice"]


def test_operation_of_a_live_owner_is_in_progress(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    action_id = queued_detach(t, sid, vid)
    owner = t.embedded.compute.manager.ops.owner  # this stack's compute service: alive
    set_row(t.db, models.InstanceAction, action_id, status="running", owner=owner,
            start_time=LONG_AGO, updated_at=LONG_AGO)
    doc = report(t)
    assert doc["exit_code"] == 0 and doc["findings"][0]["state"] == "in-progress"


# -- 2. server tasks -------------------------------------------------------------------

def test_task_without_operation(t: Tether) -> None:
    sid = t.create_server(t.nova())["id"]
    set_row(t.db, models.Instance, sid, task_state="powering-off")
    finding = left(t, "task-without-operation")
    assert finding["resource"] == f"server {sid}"
    assert finding["detail"].startswith("task_state powering-off but no operation")


# -- 3. volume statuses ----------------------------------------------------------------

def test_volume_status_contradicting_its_attachments_is_settled(t: Tether) -> None:
    vid = t.create_volume(t.api())["id"]
    set_row(t.db, models.Volume, vid, status="in-use")
    finding = repaired(t, "volume-status")
    assert finding["detail"] == ("status in-use, but its live attachments (none) make it "
                                 "available")
    assert finding["outcome"]["text"] == "settled to available"
    assert t.api().get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"


def test_available_volume_with_attachments_is_left(t: Tether) -> None:
    _nova, _cinder, _sid, vid = t.server_with_volume()
    set_row(t.db, models.Volume, vid, status="available")
    finding = left(t, "volume-status")
    assert "make it in-use" in finding["detail"] and "os-reset_status" in finding["advice"]


def test_volume_stuck_creating(t: Tether) -> None:
    vid = t.create_volume(t.api())["id"]
    set_row(t.db, models.Volume, vid, status="creating")
    doc = report(t)  # a young one: the volume service is at it
    assert doc["exit_code"] == 0
    assert [(f["state"], f["kind"]) for f in doc["findings"]] == [("in-progress", "volume")]
    set_row(t.db, models.Volume, vid, updated_at=LONG_AGO)
    finding = left(t, "stuck-volume")
    assert finding["detail"].startswith("creating for ")
    assert "volume service of testhost@file finishes it" in finding["advice"]


def test_a_reservation_is_not_stuck(t: Tether) -> None:
    """A shelved-offloaded server's volume stays reserved (an attachment
    without a connector) for as long as the server is offloaded: not drift."""
    nova, _cinder, sid, vid = t.server_with_volume()
    assert nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None}).status_code == 202
    t.wait_action(nova, sid, "shelve")
    assert t.api().get(f"/v3/volumes/{vid}").json["volume"]["status"] == "reserved"
    set_row(t.db, models.Volume, vid, updated_at=LONG_AGO)
    assert report(t)["exit_code"] == 0
    set_row(t.db, models.Volume, vid, status="attaching", updated_at=LONG_AGO)
    assert "stuck-volume" not in drifts(report(t))  # (settled instead: it contradicts)


def test_volume_status_of_a_volume_an_operation_works_on_is_not_drift(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    queued(t, sid, "detach_volume", vid)
    set_row(t.db, models.Volume, vid, status="attaching")
    assert report(t)["exit_code"] == 0


# -- 4. mappings and attachments --------------------------------------------------------

def test_mapping_whose_attachment_is_gone(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    bdm = bdm_of(t.db, sid, vid)
    set_row(t.db, models.VolumeAttachment, bdm.attachment_id, deleted=True,
            attach_status="detached")
    found = drifts(report(t))
    (finding,) = found["bdm-attachment-missing"]
    assert finding["resource"] == f"server {sid} volume {vid}"
    assert bdm.attachment_id in finding["detail"] and not finding["repairable"]
    # and what follows from it: the volume and its export are settled by --repair
    assert sorted(found) == ["bdm-attachment-missing", "export-acl", "volume-status"]


def _unmap(t: Tether, sid: str, vid: str) -> str:
    """The mapping goes (and the guest's disk and secret): storage's attachment stays."""
    bdm = bdm_of(t.db, sid, vid)
    with t.db.begin() as c:
        ComputeRepository.release_bdm(c, bdm)
    t.virt.detach_disk(sid, vid, timeout=1, attempts=1)
    t.virt.undefine_chap_secret(vid)
    assert bdm.attachment_id is not None
    return bdm.attachment_id


def test_orphan_attachment_is_deleted_through_the_volume_side(t: Tether) -> None:
    _nova, cinder, sid, vid = t.server_with_volume()
    attachment = _unmap(t, sid, vid)
    finding = repaired(t, "orphan-attachment")
    assert finding["resource"] == f"attachment {attachment}"
    assert f"server {sid} has no mapping of the volume" in finding["detail"]
    assert finding["outcome"]["text"] == ("attachment deleted, target removed, volume settled "
                                          "to available")
    vol = cinder.get(f"/v3/volumes/{vid}").json["volume"]
    assert (vol["status"], vol["attachments"]) == ("available", [])
    assert vid not in t.target.exports()


def test_what_a_deleted_server_left_behind_is_repaired(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    set_row(t.db, models.Instance, sid, deleted=True, vm_state="deleted")
    doc = report(t, repair=True)
    assert {k: [f["outcome"]["result"] for f in v] for k, v in drifts(doc).items()} == {
        "orphan-attachment": ["repaired"], "stray-domain": ["repaired"],
        "stray-secret": ["repaired"]}
    assert "its server" in drifts(doc)["orphan-attachment"][0]["detail"]
    assert drifts(doc)["stray-domain"][0]["detail"] == (
        f"server {sid} is deleted, but its domain is here (running)")
    assert doc["exit_code"] == 0 and doc["after_repair"] == []
    assert sid not in t.virt.guests and not t.virt.chap_secrets()
    assert vid not in t.target.exports()
