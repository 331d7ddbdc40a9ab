"""The old flow: a BDM without an attachment id detaches through
os-terminate_connection + os-detach, with the connector stashed in its
connection_info when the server was evacuated from the host that connected."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.harness import Tether, add_old_flow_bdm, queued_detach, run_on_host, set_row
from tether.db import models

OLD_IQN = "iqn.2026-11.org.example:old-host"


def _legacy_attached(t: Tether, stash: dict[str, Any] | None) -> tuple[str, str]:
    nova, cinder = t.nova(), t.api()
    sid = t.create_server(nova)["id"]
    vid = t.create_volume(cinder)["id"]
    act = f"/v3/volumes/{vid}/action"
    assert cinder.post(act, {"os-reserve": {}}).status_code == 202
    res = cinder.post(act, {"os-initialize_connection": {"connector": {
        "initiator": OLD_IQN, "host": "old-host"}}})
    assert res.status_code == 200
    info = res.json["connection_info"]
    assert cinder.post(act, {"os-attach": {"instance_uuid": sid, "mountpoint": "/dev/sdb",
                                           "host_name": "old-host"}}).status_code == 202
    if stash is not None:
        info["connector"] = stash
    add_old_flow_bdm(t.db, sid, vid, info)
    set_row(t.db, models.Instance, sid, host="old-host")  # registered to old-host now
    assert OLD_IQN in t.target.exports()[vid].initiators
    return sid, vid


def _detach(t: Tether, sid: str, vid: str) -> None:
    """The cast reaches this host (the API would refuse: old-host is down)."""
    assert run_on_host(t, sid, queued_detach(t, sid, vid))
    assert t.api().get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
    assert vid not in t.target.exports()


@pytest.mark.parametrize(("stash", "level", "message"), [
    ({"host": "old-host", "initiator": OLD_IQN}, logging.INFO,
     "Using the connector stashed for host old-host"),
    (None, logging.WARNING, "No connector stashed in the connection_info"),
    ({"host": "third-host", "initiator": "iqn.2026-11.org.example:third"}, logging.ERROR,
     "belongs to host third-host, which is neither this host"),
])
def test_old_flow_connector_choice(tether: Tether, caplog: pytest.LogCaptureFixture,
                                   stash: dict[str, Any] | None, level: int,
                                   message: str) -> None:
    sid, vid = _legacy_attached(tether, stash)
    caplog.set_level(logging.INFO)
    _detach(tether, sid, vid)
    assert any(r.levelno == level and message in r.getMessage() for r in caplog.records)
