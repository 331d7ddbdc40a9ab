"""Input limits of a real ``tether serve`` over HTTP: a catastrophic
``?name=`` pattern answers at once and does not slow the other requests
meanwhile; a body over ``[api] max_request_body_size`` is a JSON 413 before
it is read."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from typing import Any

import httpx

from tests.integration.fake_serve import FakeServe, fake_serve

TOKEN = "redos:p-redos"
HEADERS = {"X-Auth-Token": TOKEN, "OpenStack-API-Version": "compute 2.96"}
EVIL = "(a|aa)+$"  # exponential in Python's re on a long run of a's not ending the name


def _timed(c: httpx.Client, url: str, **kw: Any) -> tuple[float, httpx.Response]:
    started = time.perf_counter()
    res = c.get(url, **kw)
    return time.perf_counter() - started, res


def _servers(serve: FakeServe, c: httpx.Client, n: int) -> None:
    base = serve.url("compute") + "/v2.1/servers"
    for i in range(n):
        name = "a" * (250 - i) + "b"  # 2^~175 paths each for a backtracking engine
        c.post(base, json={"server": {"name": name, "flavorRef": "1"}}).raise_for_status()


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def test_catastrophic_name_pattern_stalls_nothing(tmp_path: Any) -> None:
    with fake_serve(str(tmp_path)) as serve, httpx.Client(headers=HEADERS, timeout=30) as c:
        _servers(serve, c, 10)
        servers = serve.url("compute") + "/v2.1/servers"
        other = serve.url("volume") + "/v3/volumes"
        baseline = [_timed(c, other)[0] for _ in range(60)]

        stop = threading.Event()
        evil: list[float] = []
        failures: list[str] = []

        def attack() -> None:
            with httpx.Client(headers=HEADERS, timeout=30) as mine:
                while not stop.is_set():
                    took, res = _timed(mine, servers, params={"name": EVIL})
                    evil.append(took)
                    if res.status_code != 200 or res.json()["servers"]:
                        failures.append(res.text)

        attackers = [threading.Thread(target=attack) for _ in range(4)]
        for t in attackers:
            t.start()
        try:
            during = [_timed(c, other)[0] for _ in range(60)]
        finally:
            stop.set()
            for t in attackers:
                t.join(timeout=60)
        found = c.get(servers, params={"name": "^a+b$"}).json()["servers"]

    print(f"\n?name={EVIL} over 10 names of ~250 chars: {len(evil)} requests from 4 "
          f"threads, p50 {_p(evil, .5):.1f} ms, max {max(evil) * 1000:.1f} ms; "
          f"GET /v3/volumes alone p50 {_p(baseline, .5):.1f} ms p95 {_p(baseline, .95):.1f} "
          f"ms, meanwhile p50 {_p(during, .5):.1f} ms p95 {_p(during, .95):.1f} ms")
    assert failures == []
    assert len(found) == 10  # the filter still filters
    assert evil and max(evil) < 1.0
    # under four clients hammering the pattern, the other API is still served
    # at once (with Python's re it would wait seconds for the GIL)
    assert _p(during, .95) < max(250.0, 10 * _p(baseline, .95))
    assert statistics.median(during) < 0.1


def _raw(port: int, request: bytes) -> tuple[int, str, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    ctype = next((v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
                  if k.lower() == "content-type"), "")
    return int(lines[0].split()[1]), ctype, body


def test_a_huge_body_is_refused_unread(tmp_path: Any) -> None:
    with fake_serve(str(tmp_path)) as serve:
        for api in ("compute", "volume", "image"):
            started = time.perf_counter()
            status, ctype, body = _raw(serve.ports[api], (
                b"POST /x HTTP/1.1\r\nHost: x\r\nX-Auth-Token: " + TOKEN.encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n"
                  b"Connection: close\r\n\r\n"))
            assert time.perf_counter() - started < 2.0
            assert (status, ctype) == (413, "application/json"), body
            assert b"114688" in body
        # one byte over the limit is refused the same way
        with httpx.Client(headers=HEADERS, timeout=30) as c:
            res = c.post(serve.url("volume") + "/v3/volumes", content=b" " * 114689,
                         headers={"Content-Type": "application/json"})
            assert res.status_code == 413, res.text
            assert res.json()["overLimit"]["code"] == 413
