"""``tether audit`` as a command: a clean stack, the text and JSON reports,
repairs and the audit after them, exit codes, and never a CHAP password in
what it prints or logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from tests.harness import (
    Tether,
    db_rows,
    set_row,
)
from tests.unit.audit.conftest import (
    INITIATOR,
    drifts,
    report,
    run,
)
from tether import cli
from tether.audit import Auditor
from tether.db import models
from tether.service import Drivers
from tether.volume.targets.base import TargetError
from tether.volume.targets.fake import FakeTarget

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
    box = t.embedded.volume.manager.box  # the database keeps them sealed: the clear ones
    passwords = [box.open(v.chap_password, v.id) for v in db_rows(t.db, models.Volume)
                 if v.chap_password]
    assert len(passwords) == 2
    shown = "\n".join(o + e for _rc, o, e in outputs) + caplog.text
    assert "missing-export" in shown and "REPAIRED" in shown
    for password in passwords:
        assert password not in shown
