"""Many requests at once against ``tether serve`` on the real daemons: every
request Tether accepts ends in its end state (checked on the guest's live and
persistent XML and on tgtd's export and ACL), every one it refuses is a 4xx
with a message, and nothing is left half-done.

Waves of 50 attaches over 10 servers, then 50 detaches, repeated; then races
that must have exactly one winner: one volume attached twice to one server,
one volume to two servers, one device name asked for twice."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.harness import wait_for
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve, tether_serve
from tests.integration.stack import domain_xml
from tether.executor import ProcessRunner
from tether.virt.driver import disk_alias
from tether.volume.targets.tgt import TgtTarget

TOKEN = f"race-user:race-{uuid.uuid4().hex[:6]}"
SERVERS, VOLUMES, WAVES = 10, 50, 2


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    with tether_serve(str(tmp_path_factory.mktemp("race")), tgtd) as s:
        yield s


@pytest.fixture(scope="module")
def target(tgtd: Tgtd) -> TgtTarget:
    return TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)


def _at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Send every request at the same moment (each thread waits at a barrier)."""
    start = threading.Barrier(len(calls))

    def go(call: Callable[[], httpx.Response]) -> httpx.Response:
        start.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(go, calls))


def _volumes(serve: Serve, n: int) -> list[str]:
    with serve.http(TOKEN) as c:
        vids = [c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}}
                       ).json()["volume"]["id"] for _ in range(n)]
    for vid in vids:
        serve.wait_volume(TOKEN, vid, "available")
    return vids


def _attach(c: httpx.Client, serve: Serve, sid: str, vid: str,
            device: str | None = None) -> Callable[[], httpx.Response]:
    body: dict[str, Any] = {"volumeId": vid}
    if device:
        body["device"] = device
    return lambda: c.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
                          json={"volumeAttachment": body})


def _detach(c: httpx.Client, serve: Serve, sid: str,
            vid: str) -> Callable[[], httpx.Response]:
    return lambda: c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}")


def _refusals_are_4xx(answers: list[httpx.Response], ok: int) -> int:
    """How many were accepted; each refusal must be a 4xx with a message."""
    accepted = 0
    for res in answers:
        if res.status_code == ok:
            accepted += 1
            continue
        assert 400 <= res.status_code < 500, (res.status_code, res.text)
        (fault,) = res.json().values()
        assert fault["message"], res.text
    return accepted


def _attached_everywhere(serve: Serve, target: TgtTarget, pairs: dict[str, str],
                         initiator: str) -> None:
    exports = target.exports()
    for vid, sid in pairs.items():
        vol = serve.volume(TOKEN, vid)
        assert vol["status"] == "in-use", vol
        assert [a["server_id"] for a in vol["attachments"]] == [sid]
        assert exports[vid].initiators == {initiator}
    for sid in set(pairs.values()):
        live, persistent = domain_xml(sid), domain_xml(sid, inactive=True)
        mine = [vid for vid, s in pairs.items() if s == sid]
        for vid in mine:
            assert disk_alias(vid) in live and disk_alias(vid) in persistent


def _devices(serve: Serve, c: httpx.Client, sid: str) -> list[str]:
    rows = c.get(f"{serve.compute_url}/servers/{sid}/os-volume_attachments").json()[
        "volumeAttachments"]
    return [r["device"] for r in rows]


def test_waves_of_fifty_attaches_and_detaches(serve: Serve, target: TgtTarget) -> None:
    sids = [serve.create_server(TOKEN, f"race-{n}") for n in range(SERVERS)]
    vids = _volumes(serve, VOLUMES)
    pairs = {vid: sids[n % SERVERS] for n, vid in enumerate(vids)}
    with serve.http(TOKEN) as c:
        for _ in range(WAVES):
            answers = _at_once([_attach(c, serve, sid, vid) for vid, sid in pairs.items()])
            assert _refusals_are_4xx(answers, 200) == VOLUMES  # nothing to refuse here
            for vid in vids:
                serve.wait_volume(TOKEN, vid, "in-use", timeout=120)
            _attached_everywhere(serve, target, pairs, serve.initiator)
            for sid in sids:  # five volumes each, five distinct device names
                devices = _devices(serve, c, sid)
                assert len(devices) == VOLUMES // SERVERS == len(set(devices))

            answers = _at_once([_detach(c, serve, sid, vid) for vid, sid in pairs.items()])
            assert _refusals_are_4xx(answers, 202) == VOLUMES
            for vid in vids:
                serve.wait_volume(TOKEN, vid, "available", timeout=120)
            assert not set(vids) & set(target.exports())
            for sid in sids:
                assert "ua-" not in domain_xml(sid) and "ua-" not in domain_xml(
                    sid, inactive=True)
                assert _devices(serve, c, sid) == []
    _no_secrets(vids)


def test_races_have_one_winner(serve: Serve, target: TgtTarget) -> None:
    a, b = serve.create_server(TOKEN, "race-a"), serve.create_server(TOKEN, "race-b")
    one, two, three = _volumes(serve, 3)
    with serve.http(TOKEN) as c:
        # the same volume to the same server, eight times at once
        answers = _at_once([_attach(c, serve, a, one) for _ in range(8)])
        assert _refusals_are_4xx(answers, 200) == 1
        serve.wait_volume(TOKEN, one, "in-use", timeout=60)
        # one volume to two servers at once
        answers = _at_once([_attach(c, serve, a, two), _attach(c, serve, b, two)])
        assert _refusals_are_4xx(answers, 200) == 1
        serve.wait_volume(TOKEN, two, "in-use", timeout=60)
        # one device name asked for by two volumes
        answers = _at_once([_attach(c, serve, b, three, "/dev/sdk"),
                            _attach(c, serve, b, one, "/dev/sdk")])
        assert _refusals_are_4xx(answers, 200) == 0 or all(
            r.status_code != 200 or r.json()["volumeAttachment"]["volumeId"] == three
            for r in answers)
        wait_for(lambda: serve.volume(TOKEN, three)["status"] in ("in-use", "available"),
                 60, "the third volume settled")
        # what was accepted is attached, and only that
        attached = {vid: (serve.volume(TOKEN, vid)["attachments"] or [{}])[0].get(
            "server_id") for vid in (one, two, three)}
        assert attached[one] == a
        _attached_everywhere(serve, target, {v: s for v, s in attached.items() if s},
                             serve.initiator)
        # a detach and an attach of the same volume at once: the attach is refused
        # (the volume is in use, or detaching) or the detach is (not attached yet)
        answers = _at_once([_detach(c, serve, a, one), _attach(c, serve, b, one)])
        assert [r.status_code for r in answers].count(202) + [
            r.status_code for r in answers].count(200) >= 1
        for res in answers:
            assert res.status_code in (200, 202) or 400 <= res.status_code < 500, res.text
        wait_for(lambda: serve.volume(TOKEN, one)["status"] in ("available", "in-use"), 60,
                 "the raced volume settled")
        for sid in (a, b):
            for vid in (one, two, three):
                c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}")
        for vid in (one, two, three):
            serve.wait_volume(TOKEN, vid, "available", timeout=60)


def _no_secrets(vids: list[str]) -> None:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "secret-list"],
                         capture_output=True, text=True, check=True).stdout
    assert not [vid for vid in vids if f"volume-{vid}" in out]
