"""kill -9 of ``tether serve`` in a create, at the step after the row's
insert (inside the transaction that counted the quota) and after its
commit (before the cast); then ``tether serve`` again on the same state:
the usage equals the rows, and the project can create exactly up to its
limit -- nothing leaked, nothing counted twice.  (Usage is counted from
the rows, never stored: tether/quota.py.)"""

from __future__ import annotations

import contextlib
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

ADMIN = "admin:admin"
LIMIT = 2
# (what is created, the fault point)
CASES = [("volume", "quota:volume_inserted"), ("volume", "quota:volume_committed"),
         ("server", "quota:server_inserted"), ("server", "quota:server_committed")]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    s = serving.write_config(str(tmp_path_factory.mktemp("quota-crash")), tgtd)
    try:
        yield s
    finally:
        try:
            if s.proc is None:
                serving.start(s)
            _delete_all_servers(s)
            s.delete_volumes(ADMIN)
        finally:
            serving.stop(s)


def _delete_all_servers(s: Serve) -> None:
    with s.http(ADMIN) as c:
        sids = [v["id"] for v in c.get(f"{s.compute_url}/servers?all_tenants=1"
                                       ).json()["servers"]]
        for sid in sids:
            c.delete(f"{s.compute_url}/servers/{sid}")
        for sid in sids:
            wait_for(lambda sid=sid: c.get(f"{s.compute_url}/servers/{sid}").status_code
                     == 404, 300, f"server {sid} deleted")


def _create(c: httpx.Client, s: Serve, kind: str) -> httpx.Response:
    if kind == "volume":
        return c.post(f"{s.volume_url}/volumes", json={"volume": {"size": 1}})
    return c.post(f"{s.compute_url}/servers",
                  json={"server": {"name": "quota-crash", "flavorRef": "1"}})


def _rows_and_usage(s: Serve, kind: str, token: str, project: str) -> tuple[int, int]:
    with s.http(token) as c:
        if kind == "volume":
            rows = len(c.get(f"{s.volume_url}/volumes").json()["volumes"])
            usage = c.get(f"{s.volume_url}/os-quota-sets/{project}?usage=True").json()[
                "quota_set"]["volumes"]["in_use"]
        else:
            rows = len(c.get(f"{s.compute_url}/servers").json()["servers"])
            usage = c.get(f"{s.compute_url}/os-quota-sets/{project}/detail").json()[
                "quota_set"]["instances"]["in_use"]
    return rows, int(usage)


def _set_limit(s: Serve, kind: str, project: str) -> None:
    with s.http(ADMIN) as c:
        url = (f"{s.volume_url}/os-quota-sets/{project}" if kind == "volume"
               else f"{s.compute_url}/os-quota-sets/{project}")
        key = "volumes" if kind == "volume" else "instances"
        c.put(url, json={"quota_set": {key: LIMIT}}).raise_for_status()


@pytest.mark.parametrize(("kind", "point"), CASES, ids=[p for _, p in CASES])
def test_killed_in_a_create_leaks_no_usage(serve: Serve, kind: str, point: str) -> None:
    project = f"qcrash-{uuid.uuid4().hex[:8]}"
    token = f"crash:{project}"
    serving.start(serve, env={"TETHER_KILL_AT": point})
    _set_limit(serve, kind, project)
    with serve.http(token) as c, contextlib.suppress(httpx.TransportError):
        _create(c, serve, kind)  # killed while answering
    proc = serve.proc
    assert proc is not None
    wait_for(lambda: proc.poll() is not None, 60, f"tether serve to die at {point}")
    assert proc.returncode == -signal.SIGKILL, f"serve ended {proc.returncode}, not at {point}"
    serve.proc = None

    serving.start(serve)
    try:
        rows, usage = _rows_and_usage(serve, kind, token, project)
        assert rows == usage, (rows, usage)
        assert rows == (0 if point.endswith("inserted") else 1)
        # up to the limit, and not one more
        codes: list[int] = []
        with serve.http(token) as c:
            for _ in range(LIMIT - rows + 1):
                codes.append(_create(c, serve, kind).status_code)
        assert codes == [202] * (LIMIT - rows) + [413 if kind == "volume" else 403], codes
        assert _rows_and_usage(serve, kind, token, project) == (LIMIT, LIMIT)
        if kind == "volume":  # the one created before the kill is made after all
            with serve.http(token) as c:
                vids: list[Any] = [v["id"] for v in c.get(f"{serve.volume_url}/volumes"
                                                          ).json()["volumes"]]
            for vid in vids:
                serve.wait_volume(token, vid, "available")
    finally:
        serving.stop(serve)
