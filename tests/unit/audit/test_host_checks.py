"""``tether audit``'s host checks with the fakes: libvirt domains, disks and
secrets, tgtd, this host's sessions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.harness import (
    Tether,
    connector,
    db_rows,
    set_row,
    wait_for,
)
from tests.unit.audit.conftest import (
    INITIATOR,
    left,
    only,
    repaired,
    report,
)
from tether.connectors.base import HostSession
from tether.connectors.fake import FakeConnector
from tether.db import models
from tether.virt.driver import DiskSpec, NetworkDiskSource, ServerSpec
from tether.virt.fake import FakeDriver
from tether.volume.targets.base import ChapCredentials, ExportSpec, target_iqn
from tether.volume.targets.fake import FakeTarget

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
    password = t.embedded.volume.manager.box.open(vol.chap_password, vid)
    t.target.export(ExportSpec(vid, f"{t.conf.state_dir}/volumes/volume-{vid}",
                               ChapCredentials(vol.chap_username, password)))
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
