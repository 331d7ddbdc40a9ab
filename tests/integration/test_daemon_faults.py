"""The daemons Tether stands on fail under it: tgtd killed, libvirtd
restarted, RabbitMQ and PostgreSQL restarted (the distributed mode).  Every
operation still ends finished or undone -- by the flow itself, or by the
sweeper once the daemon is back -- and nothing stays half-done."""

from __future__ import annotations

import pathlib
import threading
import time
from typing import Any

import httpx

from tests.harness import Tether, wait_for
from tests.integration.cluster import Cluster, distributed
from tests.integration.daemons import (
    Tgtd,
    restart_libvirtd,
    restart_postgresql,
    restart_rabbitmq,
)
from tests.integration.stack import domain_xml, real_tether, secret_exists, server
from tether.virt.driver import disk_alias

FAST_RECOVERY = {"volume": {"reconcile_interval": 0.5},
                 "compute": {"operation_timeout": 2.0, "sweep_interval": 0.5}}


def _status(t: Tether, vid: str) -> str:
    return str(t.api().get(f"/v3/volumes/{vid}").json["volume"]["status"])


def _events(t: Tether, sid: str, action: str) -> dict[str, Any]:
    """The newest ``action``'s steps and results, and whether it finished."""
    nova = t.nova()
    rows = [r for r in nova.get(f"/v2.1/servers/{sid}/os-instance-actions").json[
        "instanceActions"] if r["action"] == action]
    detail = nova.get(f"/v2.1/servers/{sid}/os-instance-actions/{rows[0]['request_id']}"
                      ).json["instanceAction"]
    return {e["event"]: e["result"] for e in detail["events"]} | {
        "finished": detail["finish_time"] is not None, "message": detail["message"]}


def test_tgtd_killed_under_a_detach_and_an_attach(tmp_path: pathlib.Path,
                                                  libvirtd: None) -> None:
    """tgtd dies with a volume attached.  A detach gets the guest and the host
    done, cannot do the storage side, and waits (volume detaching); an attach
    fails and cannot finish its rollback.  tgtd comes back empty: the volume
    service re-exports what the database says, the sweeper finishes the
    detach and the rollback."""
    private = Tgtd().start()
    try:
        with real_tether(str(tmp_path), private, FAST_RECOVERY) as t:
            nova, cinder = t.nova(), t.api()
            sid = server(t, nova)
            vid, other = t.create_volume(cinder)["id"], t.create_volume(cinder)["id"]
            assert nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                             {"volumeAttachment": {"volumeId": vid}}).status_code == 200
            t.wait_action(nova, sid, "attach_volume")
            assert _status(t, vid) == "in-use"

            private.stop()  # kill -9: every export, account and session gone
            assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
                               ).status_code == 202
            wait_for(lambda: _events(t, sid, "detach_volume").get(
                "s1.2+s1.3:attachment_delete") == "Error", 60, "the storage side failed")
            detach = _events(t, sid, "detach_volume")
            assert detach["s1.1.1:guest_device_removal"] == "Success"
            assert not detach["finished"] and _status(t, vid) == "detaching"
            assert disk_alias(vid) not in domain_xml(sid)

            res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                            {"volumeAttachment": {"volumeId": other}})
            assert res.status_code == 200
            wait_for(lambda: _events(t, sid, "attach_volume").get(
                "a1.1:attachment_update") == "Error", 60, "the attach failed")

            private.start()  # back, and empty
            wait_for(lambda: _status(t, vid) == "available", 60, "detach finished")
            wait_for(lambda: _events(t, sid, "attach_volume")["finished"], 60,
                     "attach rolled back")
            assert _events(t, sid, "detach_volume")["message"] is None
            assert _events(t, sid, "attach_volume")["message"] == "Error"
            assert _status(t, other) == "available"
            assert not set(t.target.exports()) & {vid, other}
            assert not secret_exists(vid) and not secret_exists(other)
            assert nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
                "volumeAttachments"] == []
    finally:
        private.stop()


def test_libvirtd_restarted_between_operations(tmp_path: pathlib.Path, tgtd: Tgtd,
                                               libvirtd: None) -> None:
    """The guests outlive libvirtd; Tether's connection and its event
    callbacks come back on their own, and a detach still waits for the
    device-removed event of the new connection."""
    with real_tether(str(tmp_path), tgtd) as t:
        nova, cinder = t.nova(), t.api()
        sid = server(t, nova)
        vid = t.create_volume(cinder)["id"]
        assert nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                         {"volumeAttachment": {"volumeId": vid}}).status_code == 200
        t.wait_action(nova, sid, "attach_volume")
        restart_libvirtd()
        assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
                           ).status_code == 202
        assert t.wait_action(nova, sid, "detach_volume")["message"] is None
        assert _status(t, vid) == "available"
        assert disk_alias(vid) not in domain_xml(sid) and not secret_exists(vid)
        restart_libvirtd()
        assert nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                         {"volumeAttachment": {"volumeId": vid}}).status_code == 200
        assert t.wait_action(nova, sid, "attach_volume")["message"] is None
        assert disk_alias(vid) in domain_xml(sid) and secret_exists(vid)


def _accepted(c: Cluster, method: str, url: str, body: Any = None) -> httpx.Response:
    """The request, again while the services reconnect (503: nothing changed)."""
    deadline = time.monotonic() + 60
    while True:
        res = c.http.request(method, url, json=body)
        if res.status_code != 503 or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def test_rabbitmq_and_postgresql_restarted(tmp_path: pathlib.Path, tgtd: Tgtd,
                                           libvirtd: None, rabbit: str) -> None:
    """Between operations and under one: the services reconnect to the broker
    and the database and every operation ends, finished or undone."""
    extra = "operation_timeout = 3\nsweep_interval = 1\n"
    with distributed(str(tmp_path), tgtd, extra) as c:
        sid, vid = c.server(), c.volume()
        url = f"{c.nova}/servers/{sid}/os-volume_attachments"
        for restart in (restart_rabbitmq, restart_postgresql):
            assert _accepted(c, "POST", url, {"volumeAttachment": {"volumeId": vid}}
                             ).status_code == 200
            c.wait_volume(vid, "in-use")
            restart()
            assert _accepted(c, "DELETE", f"{url}/{vid}").status_code == 202
            c.wait_volume(vid, "available")

        # a restart under a detach
        assert _accepted(c, "POST", url, {"volumeAttachment": {"volumeId": vid}}
                         ).status_code == 200
        c.wait_volume(vid, "in-use")
        for restart in (restart_postgresql, restart_rabbitmq):
            under = threading.Thread(target=restart)
            res = _accepted(c, "DELETE", f"{url}/{vid}")
            under.start()
            under.join(timeout=180)
            assert res.status_code == 202, res.text
            wait_for(lambda: c.status(vid) in ("available", "in-use") and all(
                a["finish_time"] for a in c.http.get(
                    f"{c.nova}/servers/{sid}/os-instance-actions").json()["instanceActions"]),
                120, "the detach finished or undone")
            if c.status(vid) == "in-use":  # undone: it can be done again
                assert _accepted(c, "DELETE", f"{url}/{vid}").status_code == 202
            c.wait_volume(vid, "available")
            assert _accepted(c, "POST", url, {"volumeAttachment": {"volumeId": vid}}
                             ).status_code == 200
            c.wait_volume(vid, "in-use")
        assert disk_alias(vid) in domain_xml(sid)
