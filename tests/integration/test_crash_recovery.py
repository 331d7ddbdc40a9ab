"""kill -9 of ``tether serve`` at every named step of attach, detach, delete
and shelve, on the real daemons; then ``tether serve`` again on the same
state, and every operation is finished or undone (docs/recovery.md):

* no operation left unfinished, no server with a task, no volume in a
  transitional status;
* the end state is whole: attached (disk in the guest's live and persistent
  XML, export to this host's initiator, libvirt secret) or not at all;
* ``tether audit`` finds no drift;
* the volume's data, written before the fault, reads back intact.

The fault points are ``tether.faults``' (``TETHER_KILL_AT``): each step of an
operation is ``<step>:start`` (its start recorded, its work not begun) and
``<step>:end`` (its work done, its finish not recorded).
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import wait_for
from tests.integration import serve as serving
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve
from tests.integration.stack import domain_xml, secret_exists
from tether.executor import ProcessRunner
from tether.virt.driver import disk_alias
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.targets.tgt import TgtTarget

TOKEN = f"crash:crash-{uuid.uuid4().hex[:6]}"
ATTACHED, DETACHED = "attached", "detached"
VOLUMES: list[str] = []  # made by this module

# (operation, fault point, how the volume ends)
CASES = [
    *[("attach", p, DETACHED) for p in (
        "a1:compute_api:start", "a1:compute_api:end",
        "a1.1:attachment_update:start", "a1.1:attachment_update:end",
        "a2:host_connect:start", "a2:host_connect:end",
        "a1.1.1:guest_device_add:start", "a1.1.1:guest_device_add:end",
        "a1.3:attachment_complete:start")],
    ("attach", "a1.3:attachment_complete:end", ATTACHED),  # only bookkeeping was left
    *[("detach", p, ATTACHED) for p in ("s1:compute_api:start", "s1:compute_api:end")],
    *[("detach", p, DETACHED) for p in (
        "s1.1:driver_detach:start", "s1.1.1:guest_device_removal:start",
        "s1.1.1:guest_device_removal:end", "s2:host_disconnect:start",
        "s2:host_disconnect:end", "s1.1:driver_detach:end",
        "s1.2+s1.3:attachment_delete:start", "s1.2+s1.3:attachment_delete:end")],
    *[("delete", p, DETACHED) for p in (
        "destroy_guest:start", "destroy_guest:end", "detach_volume:*:start",
        "detach_volume:*:end")],
    *[("shelve", p, DETACHED) for p in (
        "power_off:start", "power_off:end", "destroy_guest:start", "destroy_guest:end",
        "release_volume:*:start", "release_volume:*:end")],
    # the guest is back, its volumes not yet (the soak found this one)
    *[("unshelve", p, ATTACHED) for p in (
        "reattach_volume:*:start", "reattach_volume:*:end")],
]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    s = serving.write_config(str(tmp_path_factory.mktemp("crash")), tgtd)
    try:
        yield s
    finally:
        servers = list(s.servers)
        try:
            if s.proc is None:
                serving.start(s)
            s.delete_servers("admin:admin")
            s.delete_volumes("admin:admin")
        finally:
            serving.stop(s)
            _force_clean(s, servers)


def _force_clean(s: Serve, servers: list[str]) -> None:
    """What a failed recovery left on libvirt (this module's servers and
    volumes only: other test runs may share the host): gone anyway."""
    driver = LibvirtDriver(domain_prefix=s.prefix)
    for sid in servers:
        driver.destroy(sid)
    for vid in VOLUMES:
        driver.undefine_chap_secret(vid)


@pytest.fixture(scope="module")
def target(tgtd: Tgtd) -> TgtTarget:
    return TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)


def _attach(c: httpx.Client, serve: Serve, sid: str, vid: str) -> httpx.Response:
    return c.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
                  json={"volumeAttachment": {"volumeId": vid}})


def _setup(serve: Serve, op: str) -> tuple[str, str]:
    """A server and a volume, attached unless the operation is the attach (and
    the server shelved-offloaded when it is the unshelve)."""
    sid = serve.create_server(TOKEN, f"crash-{op}")
    with serve.http(TOKEN) as c:
        vid = c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}}).json()[
            "volume"]["id"]
        VOLUMES.append(vid)
        serve.wait_volume(TOKEN, vid, "available")
        if op != "attach":
            assert _attach(c, serve, sid, vid).status_code == 200
            serve.wait_volume(TOKEN, vid, "in-use")
        if op == "unshelve":
            assert c.post(f"{serve.compute_url}/servers/{sid}/action",
                          json={"shelve": None}).status_code == 202
            wait_for(lambda: (_server(serve, sid) or {}).get("status") == "SHELVED_OFFLOADED"
                     and _actions_finished(serve, sid), 60, "shelved")
    return sid, vid


def _do(serve: Serve, op: str, sid: str, vid: str) -> None:
    """The operation; the process may die under the request."""
    with serve.http(TOKEN) as c:
        try:
            if op == "attach":
                _attach(c, serve, sid, vid)
            elif op == "detach":
                c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}")
            elif op == "delete":
                c.delete(f"{serve.compute_url}/servers/{sid}")
            else:
                c.post(f"{serve.compute_url}/servers/{sid}/action", json={op: None})
        except httpx.TransportError:
            pass  # killed while answering


def _actions_finished(serve: Serve, sid: str) -> list[dict[str, Any]] | None:
    with serve.http("admin:admin") as c:
        rows: list[dict[str, Any]] = c.get(
            f"{serve.compute_url}/servers/{sid}/os-instance-actions").json()["instanceActions"]
    return rows if all(r["finish_time"] for r in rows) else None


def _server(serve: Serve, sid: str) -> dict[str, Any] | None:
    with serve.http("admin:admin") as c:
        res = c.get(f"{serve.compute_url}/servers/{sid}")
    return None if res.status_code == 404 else dict(res.json()["server"])


@pytest.mark.parametrize(("op", "point", "ends"), CASES,
                         ids=[f"{op}-{point}" for op, point, _ in CASES])
def test_killed_at_a_step_recovers(serve: Serve, target: TgtTarget, op: str, point: str,
                                   ends: str) -> None:
    serving.start(serve, env={"TETHER_KILL_AT": point})
    sid, vid = _setup(serve, op)
    pattern = serving.write_pattern(serve, vid)
    _do(serve, op, sid, vid)
    proc = serve.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, 60, f"tether serve to die at {point}")
    assert proc.returncode == -signal.SIGKILL, f"serve ended {proc.returncode}, not at {point}"
    serve.proc = None

    serving.start(serve)  # recovery happens as it starts
    try:
        wait_for(lambda: _actions_finished(serve, sid), 60, "every operation finished")
        vol = serve.volume(TOKEN, vid)
        srv = _server(serve, sid)
        if srv is not None:
            assert srv["OS-EXT-STS:task_state"] is None, srv
        if ends == ATTACHED:
            assert vol["status"] == "in-use" and vol["attachments"][0]["server_id"] == sid
            assert disk_alias(vid) in domain_xml(sid)
            assert disk_alias(vid) in domain_xml(sid, inactive=True)
            assert target.exports()[vid].initiators == {serve.initiator}
            assert secret_exists(vid)
        elif op == "shelve":
            assert srv is not None and srv["status"] == "SHELVED_OFFLOADED"
            with serve.http("admin:admin") as c:  # one reservation left, without a connector
                atts = c.get(f"{serve.volume_url}/attachments?all_tenants=1&volume_id={vid}"
                             ).json()["attachments"]
            assert vol["status"] == "reserved" and [a["status"] for a in atts] == [
                "reserved"], (vol, atts)
            assert vid not in target.exports() and not secret_exists(vid)
        else:
            assert vol["status"] == "available" and vol["attachments"] == [], vol
            assert vid not in target.exports() and not secret_exists(vid)
            if srv is not None:
                assert disk_alias(vid) not in domain_xml(sid, inactive=True)
        if op == "delete":
            assert srv is None
        audit = serving.cli(serve, "audit")
        assert audit.returncode == 0, audit.stdout + audit.stderr
        assert serving.read_pattern(serve, vid) == pattern
    finally:
        serving.stop(serve)
