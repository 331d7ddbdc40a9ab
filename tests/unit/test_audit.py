"""``tether audit [--repair]`` against the embedded stack with the fakes: every
drift kind is found, each repairable one is repaired (and the audit after it
is clean), what an operation in progress touches is not drift, exit codes,
the JSON report, and never a CHAP password in anything it prints or logs.
The real libvirt and tgtd are in tests/integration/test_audit.py."""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import (
    Tether,
    bdm_of,
    connector,
    db_rows,
    queued,
    queued_detach,
    set_row,
    wait_for,
)
from tether import cli
from tether.audit import Auditor, command
from tether.compute.repository import ComputeRepository
from tether.connectors.base import HostSession
from tether.connectors.fake import FakeConnector
from tether.connectors.iscsi_direct import IscsiDirectConnector
from tether.db import models
from tether.service import Drivers
from tether.virt.driver import DiskSpec, NetworkDiskSource, ServerSpec
from tether.virt.fake import FakeDriver
from tether.volume.targets.base import ChapCredentials, ExportSpec, TargetError, target_iqn
from tether.volume.targets.fake import FakeTarget

INITIATOR = "iqn.2010-10.org.tether:audit-host"
LONG_AGO = models.utcnow().replace(year=2000)


@pytest.fixture
def t(tmp_path: object) -> Iterator[Tether]:
    """A stack whose host reaches volumes as iscsi-direct does (CHAP secrets
    in the fake libvirt), so the secret checks apply."""
    virt = FakeDriver()
    stack = Tether(str(tmp_path), FakeTarget(), virt,
                   IscsiDirectConnector(virt, INITIATOR, "testhost"))
    try:
        yield stack
    finally:
        stack.stop()


def run(t: Tether, *, repair: bool = False, fmt: str = "text",
        **drivers: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    given = {"target": t.target, "virt": t.virt, "connector": t.connector, **drivers}
    rc = command(t.conf, repair=repair, fmt=fmt, drivers=Drivers(**given), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def report(t: Tether, repair: bool = False) -> dict[str, Any]:
    rc, out, _ = run(t, repair=repair, fmt="json")
    doc: dict[str, Any] = json.loads(out)
    assert doc["exit_code"] == rc
    return doc


def drifts(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The drifts of a JSON report by kind."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in doc["findings"]:
        if f["state"] == "drift":
            out.setdefault(f["kind"], []).append(f)
    return out


def only(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    found = drifts(doc)
    assert list(found) == [kind], found
    (finding,) = found[kind]
    return finding


def repaired(t: Tether, kind: str) -> dict[str, Any]:
    """Repair a stack with exactly one drift of ``kind``: repaired, then clean."""
    doc = report(t, repair=True)
    finding = only(doc, kind)
    assert finding["outcome"]["result"] == "repaired", finding
    assert doc["after_repair"] == [] and doc["exit_code"] == 0
    assert report(t)["exit_code"] == 0
    return finding


def left(t: Tether, kind: str) -> dict[str, Any]:
    """Repair a stack with exactly one drift of ``kind``: left, with advice."""
    doc = report(t, repair=True)
    finding = only(doc, kind)
    assert not finding["repairable"] and finding["advice"]
    assert finding["outcome"] == {"result": "left", "text": finding["advice"]}
    assert [f["kind"] for f in doc["after_repair"]] == [kind] and doc["exit_code"] == 1
    return finding


# -- clean, and the output ---------------------------------------------------------

def test_a_stack_after_attach_and_detach_audits_clean(t: Tether) -> None:
    nova, _cinder, sid, vid = t.server_with_volume()
    rc, out, err = run(t)
    assert (rc, err) == (0, "")
    assert out.strip() == "audit: no drift (1 server, 1 domain, 1 volume, 1 export)"
    assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}").status_code == 202
    t.wait_action(nova, sid, "detach_volume")
    assert run(t)[:2] == (0, "audit: no drift (1 server, 1 domain, 1 volume)\n")


def test_text_lines_and_summary(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    t.target.lose_everything()
    t.virt.power_off(sid)
    rc, out, _ = run(t)
    assert rc == 1
    lines = out.splitlines()
    assert lines[0] == (f"DRIFT        power-state           server {sid}: vm_state active, "
                        "but the guest is shutoff")
    assert any(line.startswith("DRIFT") and "missing-export" in line
               and f"volume {vid}: attached to {INITIATOR}" in line for line in lines)
    assert lines[-1] == "audit: 2 drifts (1 repairable with --repair)"
    rc, out, _ = run(t, repair=True)
    assert rc == 1
    assert [line.split()[:2] for line in out.splitlines()[:-1]] == [
        ["DRIFT", "power-state"], ["LEFT", "power-state"],
        ["DRIFT", "missing-export"], ["REPAIRED", "missing-export"]]
    assert out.splitlines()[-1] == ("audit: 2 drifts: 1 repaired, 1 left; after repair: "
                                    "1 drift remains")


def test_json_report(t: Tether) -> None:
    _nova, _cinder, sid, _vid = t.server_with_volume()
    t.virt.power_off(sid)
    doc = report(t)
    assert doc["clean"] is False and doc["exit_code"] == 1
    assert doc["findings"] == [{
        "state": "drift", "kind": "power-state", "resource": f"server {sid}",
        "detail": "vm_state active, but the guest is shutoff", "repairable": False,
        "advice": f"start it: `virsh start tether-{sid}`, or stop and start the server"}]
    assert doc["checked"] == {"server": 1, "domain": 1, "volume": 1, "export": 1}
    assert "after_repair" not in doc
    t.virt.power_on(sid)
    assert report(t) == {"clean": True, "exit_code": 0, "findings": [], "checked": doc[
        "checked"], "summary": "audit: no drift (1 server, 1 domain, 1 volume, 1 export)"}


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


# -- 5. libvirt ------------------------------------------------------------------------

def test_missing_domain(t: Tether) -> None:
    sid = t.create_server(t.nova())["id"]
    t.virt.destroy(sid)
    finding = left(t, "missing-domain")
    assert finding["detail"] == (f"active on this host, but libvirt has no domain "
                                 f"tether-{sid}")


@pytest.mark.parametrize("whose", ["unknown", "other-host"])
def test_stray_domain_is_destroyed(t: Tether, whose: str) -> None:
    if whose == "unknown":
        sid = str(uuid.uuid4())
        t.virt.spawn(ServerSpec(sid, f"tether-{sid}", 1, 64))
        why = "unknown to the database"
    else:
        sid = t.create_server(t.nova())["id"]
        set_row(t.db, models.Instance, sid, host="otherhost")
        why = "on host otherhost"
    finding = repaired(t, "stray-domain")
    assert finding["resource"] == f"domain tether-{sid}"
    assert finding["detail"] == f"server {sid} is {why}, but its domain is here (running)"
    assert sid not in t.virt.guests


def _disk(vid: str) -> DiskSpec:
    return DiskSpec(vid, "sdc", "scsi", NetworkDiskSource("iqn.x", 1, "127.0.0.1", 3260, "i"))


def test_missing_disk(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    t.virt.guests[sid].persistent.pop(vid)
    finding = left(t, "missing-disk")
    assert finding["resource"] == f"server {sid} volume {vid}"
    assert finding["detail"] == (f"connected, but disk ua-{vid} is missing from the "
                                 "persistent definition")
    t.virt.guests[sid].live.pop(vid)
    assert only(report(t), "missing-disk")["detail"].endswith(
        "the persistent definition and the running guest")


def test_stray_disk_is_left(t: Tether) -> None:
    sid = t.create_server(t.nova())["id"]
    vid = str(uuid.uuid4())
    t.virt.attach_disk(sid, _disk(vid))
    finding = left(t, "stray-disk")
    assert finding["detail"] == (f"disk ua-{vid} is in the persistent definition and the "
                                 "running guest, but no mapping of the server connects the "
                                 "volume")
    assert f"virsh detach-device-alias tether-{sid} ua-{vid}" in finding["advice"]


def test_power_state(t: Tether) -> None:
    sid = t.create_server(t.nova())["id"]
    set_row(t.db, models.Instance, sid, vm_state="stopped")
    finding = left(t, "power-state")
    assert finding["detail"] == "vm_state stopped, but the guest is running"
    assert finding["advice"] == f"power it off: `virsh destroy tether-{sid}` (as a stop does)"


# -- 6. libvirt secrets ------------------------------------------------------------------

def test_stray_secret_is_undefined(t: Tether) -> None:
    t.create_server(t.nova())
    vid = t.create_volume(t.api())["id"]
    t.virt.define_chap_secret(vid, "tetheruser", "pw-of-a-stray-secret")
    finding = repaired(t, "stray-secret")
    assert finding["resource"] == f"secret tether-volume-{vid}"
    assert "no mapping on this host connects it" in finding["detail"]
    assert not t.virt.chap_secrets()


def test_missing_secret(t: Tether) -> None:
    _nova, _cinder, sid, vid = t.server_with_volume()
    t.virt.undefine_chap_secret(vid)
    finding = left(t, "missing-secret")
    assert finding["resource"] == f"server {sid} volume {vid}"


def test_secrets_are_not_checked_for_other_connectors(tmp_path: object) -> None:
    stack = Tether(str(tmp_path), FakeTarget(), FakeDriver(), FakeConnector())
    try:
        stack.server_with_volume()  # the fake connector defines no secret
        assert report(stack)["exit_code"] == 0
    finally:
        stack.stop()


# -- 7. tgtd ------------------------------------------------------------------------------

def test_missing_export_is_re_exported(t: Tether) -> None:
    _nova, _cinder, _sid, vid = t.server_with_volume()
    t.target.lose_everything()
    repaired(t, "missing-export")
    assert t.target.exports()[vid].initiators == {INITIATOR}


@pytest.mark.parametrize(("kind", "change", "says"), [
    ("export-acl", {"initiators": frozenset({"iqn.2026-11.org.example:intruder"})},
     f"its target admits iqn.2026-11.org.example:intruder, its attachments {INITIATOR}"),
    ("export-lun", {"backing_path": "/elsewhere"}, "LUN 1 is backed by /elsewhere, not "),
    ("export-account", {"chap_username": "tether00000000000000"},
     "the target's CHAP account is tether00000000000000, not the volume's tether"),
])
def test_export_drift_is_synced(t: Tether, kind: str, change: dict[str, Any],
                                says: str) -> None:
    _nova, _cinder, _sid, vid = t.server_with_volume()
    good = t.target.exports()[vid]
    t.target.change_export(vid, **change)
    finding = repaired(t, kind)
    assert finding["resource"] == f"volume {vid}" and finding["detail"].startswith(says)
    assert t.target.exports()[vid] == good


def test_export_without_connected_attachment_is_removed(t: Tether) -> None:
    vid = t.create_volume(t.api())["id"]
    (vol,) = db_rows(t.db, models.Volume, id=vid)
    t.target.export(ExportSpec(vid, f"{t.conf.state_dir}/volumes/volume-{vid}",
                               ChapCredentials(vol.chap_username, vol.chap_password)))
    finding = repaired(t, "export-acl")
    assert finding["detail"] == "its target exists, but no attachment is connected"
    assert finding["outcome"]["text"] == "target removed (no attachment is connected)"


@pytest.mark.parametrize("deleted", [True, False])
def test_stray_export_is_removed(t: Tether, deleted: bool) -> None:
    if deleted:
        vid = t.create_volume(t.api())["id"]
        assert t.api().delete(f"/v3/volumes/{vid}").status_code == 202
        wait_for(lambda: t.api().get(f"/v3/volumes/{vid}").status_code == 404,
                 what=f"volume {vid} deleted")
    else:
        vid = str(uuid.uuid4())
    t.target.export(ExportSpec(vid, "/v", ChapCredentials("tether0123", "pw"),
                               frozenset({INITIATOR})))
    finding = repaired(t, "stray-export")
    assert finding["resource"] == f"target {target_iqn(vid)}"
    assert finding["detail"].startswith(
        f"volume {vid} is {'deleted' if deleted else 'unknown to the database'}")
    assert vid not in t.target.exports()


def test_foreign_session_is_left(t: Tether) -> None:
    _nova, _cinder, _sid, vid = t.server_with_volume()
    other = "iqn.2026-11.org.example:gone"
    t.target.set_sessions(vid, frozenset({INITIATOR, other}))
    finding = left(t, "foreign-session")
    assert finding["resource"] == f"volume {vid} session {other}"


def test_stray_account_is_deleted(t: Tether) -> None:
    _nova, _cinder, _sid, vid = t.server_with_volume()
    (vol,) = db_rows(t.db, models.Volume, id=vid)
    other = t.create_volume(t.api())["id"]  # not exported: its account is not either
    (unexported,) = db_rows(t.db, models.Volume, id=other)
    t.target.add_account("tether0a1b2c3d4e5f60")
    t.target.add_account("someone-elses")  # not one of Tether's names
    t.target.add_account(unexported.chap_username)  # a live volume's: never a stray
    finding = repaired(t, "stray-account")
    assert finding["resource"] == "account tether0a1b2c3d4e5f60"
    assert t.target.accounts() == {vol.chap_username, "someone-elses",
                                   unexported.chap_username}


# -- 8. this host's sessions ---------------------------------------------------------------

def test_qemu_session_without_connection_here(t: Tether) -> None:
    """iscsi-direct: tgtd shows a session from this host's initiator on a
    volume nothing here connects (exported to another host)."""
    cinder = t.api("admin:p1")
    vid = t.create_volume(cinder)["id"]
    res = cinder.post("/v3/attachments", {"attachment": {
        "volume_uuid": vid, "connector": connector()}})
    assert res.status_code == 200, res.text
    t.target.set_sessions(vid, frozenset({INITIATOR}))  # not in the ACL: not "foreign" too
    finding = left(t, "stray-host-session")
    assert finding["resource"] == f"volume {vid} session {INITIATOR}"


def test_host_session_without_connection_here(tmp_path: object) -> None:
    """A connector with host sessions (the iscsi one's are iscsiadm's)."""
    host = FakeConnector()
    stack = Tether(str(tmp_path), FakeTarget(), FakeDriver(), host)
    try:
        _nova, _cinder, _sid, vid = stack.server_with_volume()
        stray = str(uuid.uuid4())
        host.sessions = {HostSession(target_iqn(vid), "127.0.0.1:3260"),  # connected: fine
                         HostSession(target_iqn(stray), "127.0.0.1:3260"),
                         HostSession("iqn.2001-04.com.example:other", "10.0.0.1:3260")}
        finding = left(stack, "stray-host-session")
        assert finding["resource"] == f"session {target_iqn(stray)} at 127.0.0.1:3260"
        assert finding["advice"].endswith(
            f"`iscsiadm -m node -T {target_iqn(stray)} -p 127.0.0.1:3260 --logout`")
    finally:
        stack.stop()


# -- repairs and exit codes --------------------------------------------------------------

def test_a_repair_that_fails_is_left_and_the_exit_code_is_1(t: Tether) -> None:
    _nova, _cinder, _sid, vid = t.server_with_volume()
    t.target.lose_everything()
    t.target.fail_next("export")
    rc, out, _ = run(t, repair=True)
    assert rc == 1
    assert (f"LEFT         missing-export        volume {vid}: the repair (make the export "
            "what the database says (sync_export)) failed: fake export of volume") in out
    assert out.splitlines()[-1].endswith("after repair: 1 drift remains")


def test_a_drift_gone_before_its_repair_is_not_repaired(t: Tether) -> None:
    t.create_server(t.nova())
    vid = t.create_volume(t.api())["id"]
    t.virt.define_chap_secret(vid, "u", "p")
    auditor = Auditor(t.conf, t.db, Drivers(t.target, t.virt, t.connector))
    first = auditor.audit

    def audit() -> Any:
        found = first()
        t.virt.undefine_chap_secret(vid)  # someone fixed it right after the first look
        return found

    auditor.audit = audit  # type: ignore[method-assign]
    (outcome,) = auditor.run(repair=True).outcomes or []
    assert (outcome.finding.kind, outcome.result) == ("stray-secret", "gone")


def test_exit_2_when_tgtd_cannot_be_read(t: Tether) -> None:
    class Down(FakeTarget):
        def exports(self) -> dict[str, Any]:
            raise TargetError("cannot reach tgtd at /var/run/tgtd/socket.0: tgtd is not running")

    rc, out, err = run(t, target=Down())
    assert (rc, out) == (2, "")
    assert err == ("tether audit: cannot audit: tgtd could not be read (cannot reach tgtd at "
                   "/var/run/tgtd/socket.0: tgtd is not running); is tgtd running?\n")
    rc, out, _ = run(t, target=Down(), fmt="json")
    assert rc == 2 and json.loads(out)["exit_code"] == 2


def test_exit_2_without_a_database(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda conf, to_stderr: None)
    assert cli.main(["--state-dir", str(tmp_path), "audit"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"tether audit: cannot audit: there is no database at {tmp_path}/tether.db: "
                   "is --state-dir (or [database] connection) the services' one?\n")
    assert "Traceback" not in err
    assert not (tmp_path / "tether.db").exists()  # nothing was created
    assert cli.main(["--state-dir", str(tmp_path), "audit", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_on_a_stack_with_the_configured_drivers(t: Tether, tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Through ``tether audit`` itself: the drivers it makes from the
    configuration (fresh fakes here, so the stack's guest and export are
    missing from them)."""
    monkeypatch.setattr(cli, "setup_logging", lambda conf, to_stderr: None)
    t.server_with_volume()
    conf = tmp_path / "audit.conf"
    conf.write_text("[DEFAULT]\nhost = testhost\n[compute]\nvirt_driver = fake\n"
                    f"initiator_iqn = {INITIATOR}\n[volume]\ntarget_driver = fake\n")
    assert cli.main(["--config-file", str(conf), "--state-dir", t.conf.state_dir, "audit",
                     "--format", "json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert sorted(drifts(doc)) == ["missing-domain", "missing-export", "missing-secret"]


# -- secrets ---------------------------------------------------------------------------------

def test_no_chap_password_in_any_output_or_log(t: Tether, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    caplog.set_level(logging.DEBUG)
    _nova, _cinder, _sid, vid = t.server_with_volume()
    other = t.create_volume(t.api())["id"]
    t.target.lose_everything()  # a re-export sends the password to the target
    t.virt.undefine_chap_secret(vid)
    set_row(t.db, models.Volume, other, status="in-use")
    t.target.add_account("tether0a1b2c3d4e5f60")
    outputs = [run(t, fmt=fmt, repair=repair) for fmt in ("text", "json")
               for repair in (False, True)]
    passwords = [v.chap_password for v in db_rows(t.db, models.Volume) if v.chap_password]
    assert len(passwords) == 2
    shown = "\n".join(o + e for _rc, o, e in outputs) + caplog.text
    assert "missing-export" in shown and "REPAIRED" in shown
    for password in passwords:
        assert password not in shown
