"""The Block Storage API against a real tgtd: what an initiator can reach is
exactly what the attachments say (issue: block storage, "Done when")."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Api, Tether, connector, set_row, wait_for
from tests.integration.daemons import Tgtd, iscsi_inq
from tether.connectors.fake import FakeConnector
from tether.db import models
from tether.executor import ProcessRunner
from tether.virt.fake import FakeDriver
from tether.volume.targets.tgt import TgtTarget

A = f"iqn.2026-11.org.example:a-{uuid.uuid4().hex[:8]}"
B = f"iqn.2026-11.org.example:b-{uuid.uuid4().hex[:8]}"
ADMIN = "admin:p1"


def _start(state_dir: str, tgtd: Tgtd) -> Tether:
    target = TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)
    return Tether(state_dir, target, FakeDriver(), FakeConnector(),
                  overrides={"volume": {"target_port": tgtd.portal_port,
                                        "tgt_control_port": tgtd.control_port}})


@pytest.fixture
def tether(tmp_path: Any, tgtd: Tgtd) -> Iterator[Tether]:
    t = _start(str(tmp_path), tgtd)
    try:
        yield t
    finally:
        t.stop()


def _attach(api: Api, vid: str, initiator: str) -> dict[str, Any]:
    res = api.post("/v3/attachments", {"attachment": {
        "volume_uuid": vid, "instance_uuid": str(uuid.uuid4()),
        "connector": connector(initiator, host=initiator[-8:])}})
    assert res.status_code == 200, res.text
    att: dict[str, Any] = res.json["attachment"]
    assert api.post(f"/v3/attachments/{att['id']}/action",
                    {"os-complete": None}).status_code == 204
    return att


def _inq(info: dict[str, Any], initiator: str, chap: bool = True,
         password: str | None = None) -> tuple[bool, str]:
    return iscsi_inq(initiator, info["target_portal"], info["target_iqn"],
                     info["auth_username"] if chap else None,
                     (password or info["auth_password"]) if chap else None)


def test_acl_and_chap_follow_the_attachment(tether: Tether, tgtd: Tgtd) -> None:
    admin = tether.api(ADMIN)
    vid = tether.create_volume(admin)["id"]
    att = _attach(admin, vid, A)
    info = att["connection_info"]

    ok, out = _inq(info, A)
    assert ok, out
    ok, out = _inq(info, B)
    assert not ok and "Target not found(515)" in out
    ok, out = _inq(info, A, chap=False)
    assert not ok and "Authentication failure" in out
    ok, out = _inq(info, A, password="wrong-password-x")
    assert not ok and "Authentication failure" in out

    assert admin.delete(f"/v3/attachments/{att['id']}").status_code == 200
    ok, out = _inq(info, A)
    assert not ok
    assert info["target_iqn"] not in tgtd.show()
    assert admin.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"


def test_multiattach_two_initiators_until_each_goes(tether: Tether, tgtd: Tgtd) -> None:
    admin = tether.api(ADMIN)
    vid = tether.create_volume(admin, multiattach=True)["id"]
    a, b = _attach(admin, vid, A), _attach(admin, vid, B)
    info = b["connection_info"]
    assert _inq(info, A)[0] and _inq(info, B)[0]

    admin.delete(f"/v3/attachments/{a['id']}")
    assert not _inq(info, A)[0]
    assert _inq(info, B)[0]
    assert admin.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "in-use"

    admin.delete(f"/v3/attachments/{b['id']}")
    assert not _inq(info, B)[0]
    assert info["target_iqn"] not in tgtd.show()


def test_exports_come_back_after_tgtd_and_service_restart(tmp_path: Any, tgtd: Tgtd) -> None:
    t = _start(str(tmp_path), tgtd)
    try:
        admin = t.api(ADMIN)
        vid = t.create_volume(admin)["id"]
        info = _attach(admin, vid, A)["connection_info"]
        assert _inq(info, A)[0]
    finally:
        t.stop()
    tgtd.restart()
    assert info["target_iqn"] not in tgtd.show()
    assert not _inq(info, A)[0]

    t = _start(str(tmp_path), tgtd)  # the volume service reconciles on start
    try:
        ok, out = _inq(info, A)
        assert ok, out
        assert not _inq(info, B)[0]
        assert t.target.exports()[vid].initiators == {A}
    finally:
        for att in t.api(ADMIN).get(f"/v3/attachments?volume_id={vid}").json["attachments"]:
            t.api(ADMIN).delete(f"/v3/attachments/{att['id']}")
        t.stop()


def test_stray_export_removed_on_start(tmp_path: Any, tgtd: Tgtd) -> None:
    """An export whose volume no longer exists (deleted while tgtd was away,
    or a crash between steps) is removed when the service starts."""
    t = _start(str(tmp_path), tgtd)
    try:
        admin = t.api(ADMIN)
        vid = t.create_volume(admin)["id"]
        _attach(admin, vid, A)
        set_row(t.db, models.Volume, vid, deleted=True)
    finally:
        t.stop()
    t = _start(str(tmp_path), tgtd)
    try:
        assert vid not in t.target.exports()
    finally:
        t.stop()


def test_running_service_heals_a_tgtd_restart(tmp_path: Any, tgtd: Tgtd) -> None:
    """No service restart needed: the periodic reconcile re-creates the export."""
    target = TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)
    t = Tether(str(tmp_path), target, FakeDriver(), FakeConnector(),
               overrides={"volume": {"reconcile_interval": 0.2}})
    try:
        admin = t.api(ADMIN)
        vid = t.create_volume(admin)["id"]
        att = _attach(admin, vid, A)
        info = att["connection_info"]
        tgtd.restart()
        assert not _inq(info, A)[0]
        wait_for(lambda: _inq(info, A)[0], timeout=10, what="export re-created")
        assert not _inq(info, B)[0]
        admin.delete(f"/v3/attachments/{att['id']}")
    finally:
        t.stop()
