"""schemathesis fuzzes both OpenAPI documents of a real ``tether serve``
(its own process, over HTTP; fake virt and target drivers, so that accepted
server and volume creates stay cheap): valid and invalid requests made from
the published schemas, path ids sometimes real ones, tokens of a member or
an admin.  Checks, for every case:

* no 5xx;
* no response slower than ``SLOW`` seconds (no hang);
* every error is a JSON fault naming its own status;
* a refused (4xx) request changed nothing: the database's rows (every table
  but the heartbeats) are the same after it as before.

``FUZZ_EXAMPLES`` (default 30) is the number of cases per operation and
generation mode (valid, invalid): the default run is a few thousand cases.
Periodic writers (reconcile, sweeper) are off, and the test waits after an
accepted request until the database is still, so that a change seen after a
refused one is that request's."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.harness import wait_for
from tests.integration.fake_serve import FakeServe, fake_serve

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "30"))
SLOW = 5.0  # seconds: a response slower than this is a failure (a hang)
MEMBER, ADMIN = "fuzzer:p-fuzz", "admin:admin"
# heartbeats change on their own; a quota lock row is made and its counter
# bumped by every create that counts usage, refused or not (no state of its own)
_QUIET_TABLES = ("services", "alembic_version", "quota_locks")


def _snapshot(state_dir: str) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(f"file:{os.path.join(state_dir, 'tether.db')}?mode=ro", uri=True,
                         timeout=10)
    try:
        tables = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(map(repr, db.execute(f'SELECT * FROM "{t}"')))
                for t in tables if t not in _QUIET_TABLES}
    finally:
        db.close()


def _still(state_dir: str) -> dict[str, list[tuple[Any, ...]]]:
    """The database once two reads 50 ms apart agree (accepted requests may
    go on in the background)."""
    last: list[Any] = [_snapshot(state_dir)]

    def settled() -> bool:
        time.sleep(0.05)  # the interval between two reads, not a wait for a state
        now = _snapshot(state_dir)
        same = now == last[0]
        last[0] = now
        return same
    wait_for(settled, 30, "the database still")
    return dict(last[0])


def _seed(serve: FakeServe) -> None:
    """Real ids for path parameters: a server, volumes, an attachment."""
    hdrs = {"X-Auth-Token": MEMBER, "OpenStack-API-Version": "volume 3.71, compute 2.96"}
    with httpx.Client(headers=hdrs, timeout=30) as c:
        vols = []
        for n in range(2):
            res = c.post(serve.url("volume") + "/v3/volumes",
                         json={"volume": {"size": 1, "name": f"fuzz-{n}"}})
            res.raise_for_status()
            vols.append(res.json()["volume"]["id"])
        res = c.post(serve.url("compute") + "/v2.1/servers",
                     json={"server": {"name": "fuzz", "flavorRef": "1"}})
        res.raise_for_status()
        sid = res.json()["server"]["id"]
        wait_for(lambda: c.get(f"{serve.url('compute')}/v2.1/servers/{sid}").json()[
            "server"]["status"] == "ACTIVE", 60, "server ACTIVE")
        wait_for(lambda: all(c.get(f"{serve.url('volume')}/v3/volumes/{v}").json()[
            "volume"]["status"] == "available" for v in vols), 60, "volumes available")
        res = c.post(f"{serve.url('compute')}/v2.1/servers/{sid}/os-volume_attachments",
                     json={"volumeAttachment": {"volumeId": vols[0]}})
        res.raise_for_status()
        wait_for(lambda: c.get(f"{serve.url('volume')}/v3/volumes/{vols[0]}").json()[
            "volume"]["status"] == "in-use", 60, "volume in-use")
        atts = c.get(serve.url("volume") + "/v3/attachments").json()["attachments"]
        actions = c.get(f"{serve.url('compute')}/v2.1/servers/{sid}/os-instance-actions"
                        ).json()["instanceActions"]
    serve.ids = {"server_id": [sid], "volume_id": vols,
                 "attachment_id": [a["id"] for a in atts],
                 "request_id": [a["request_id"] for a in actions],
                 "type_id": ["__DEFAULT__", "default"], "flavor_id": ["1", "2"],
                 "key": ["hw:cpu_policy"]}


@dataclass
class Findings:
    cases: int = 0
    refused: int = 0
    slowest: float = 0.0
    problems: list[str] = field(default_factory=list)

    def add(self, what: str, case: Any, detail: str) -> None:
        if len(self.problems) < 50:
            body = json.dumps(case.body, default=str)[:300]
            self.problems.append(f"{what}: {case.method} {case.formatted_path} "
                                 f"query={case.query} body={body} -> {detail[:300]}")


def _run_case(serve: FakeServe, api: str, case: Any, pick: int, found: Findings) -> None:
    if pick and case.path_parameters:
        for name in case.path_parameters:
            choices = serve.ids.get(name)
            if choices:
                case.path_parameters[name] = choices[pick % len(choices)]
    headers = dict(case.headers or {})
    headers["X-Auth-Token"] = ADMIN if pick == 3 else MEMBER
    if pick:
        headers["OpenStack-API-Version"] = f"{api} latest"
    before = serve.known if serve.known is not None else _still(serve.state_dir)
    serve.known = None
    started = time.monotonic()
    try:
        res = case.call(base_url=serve.url(api), headers=headers, timeout=SLOW)
    except Exception as e:  # a timeout or a dropped connection
        found.add("no answer", case, repr(e))
        return
    took = time.monotonic() - started
    found.cases += 1
    found.slowest = max(found.slowest, took)
    status = res.status_code
    if status >= 500:
        found.add(f"{status}", case, res.text)
    if took > SLOW:
        found.add("slow", case, f"{took:.2f}s")
    if status >= 400:
        try:
            (fault,) = res.json().values()
            assert fault["code"] == status
        except Exception:
            found.add("not a JSON fault", case, res.text)
    if 400 <= status < 500:
        found.refused += 1
        after = _snapshot(serve.state_dir)
        serve.known = after
        if after != before:
            changed = sorted(t for t in after if after[t] != before.get(t))
            found.add("refused but changed", case, f"{status} {res.text} tables {changed}")


def _fuzz(serve: FakeServe, api: str, found: Findings) -> None:
    schema = schemathesis.openapi.from_url(f"{serve.url(api)}/openapi.json")
    for result in schema.get_all_operations():
        operation = result.ok()
        strategy = (operation.as_strategy(GenerationMode.POSITIVE)
                    | operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=EXAMPLES * 2, deadline=None, database=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=strategy, pick=st.integers(0, 3))
        def run(case: Any, pick: int) -> None:
            _run_case(serve, api, case, pick, found)

        run()


@pytest.mark.timeout(900)
def test_fuzz_both_apis(tmp_path: Any) -> None:
    found = Findings()
    started = time.monotonic()
    with fake_serve(str(tmp_path)) as serve:
        _seed(serve)
        for api in ("volume", "compute"):
            _fuzz(serve, api, found)
        assert serve.proc is not None and serve.proc.poll() is None, "tether serve died"
    elapsed = time.monotonic() - started
    print(f"fuzz: {found.cases} cases ({found.refused} refused) in {elapsed:.1f}s, "
          f"slowest {found.slowest * 1000:.0f} ms")
    assert found.cases >= EXAMPLES
    assert found.problems == []
