#!/usr/bin/env python3
"""Where a Tether attach/detach spends its CPU: ``tether serve``'s services
run in this process under yappi (CPU clock) while the main thread drives
attach/detach cycles over HTTP; the main thread's own cost is left out.

Prints the CPU per operation, the SQL statements and commits per operation
(counted with SQLAlchemy events) and the top functions by own time.

Usage: .venv/bin/python bench/profile_ops.py [--cycles 20] [--top 40]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import sqlite3
import tempfile
import threading
import time
from typing import Any

import httpx
import yappi
from sqlalchemy import event

from tether import config, daemons
from tether.service import Embedded, service_token


def thread_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every live thread of this process, by thread id."""
    out = {}
    for t in threading.enumerate():
        with contextlib.suppress(OSError, TypeError):  # the thread ended meanwhile
            out[t.ident] = (t.name, time.clock_gettime(time.pthread_getcpuclockid(t.ident)))
    return out


def wait_status(db: sqlite3.Connection, vid: str, status: str, timeout: float = 60) -> None:
    """Watch the volume's status in the database (costs the service nothing,
    unlike polling its API)."""
    deadline = time.monotonic() + timeout
    while db.execute("SELECT status FROM volumes WHERE id = ?", (vid,)).fetchone()[0] != status:
        if time.monotonic() > deadline:
            raise RuntimeError(f"volume not {status}")
        time.sleep(0.005)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sql", action="store_true", help="print one cycle's statements")
    ap.add_argument("--log", action="store_true",
                    help="log to a file as `tether serve` does (INFO, one line per request)")
    args = ap.parse_args()
    daemons.ensure_libvirtd()
    daemons.ensure_tgtd(0)
    state = tempfile.mkdtemp(prefix="tether-profile-")
    conf = config.load(state_dir=state, overrides={"api": {
        "auth_strategy": "noauth", "compute_port": 0, "volume_port": 0}})
    if args.log:
        from tether.cli import setup_logging
        setup_logging(conf, to_stderr=False)
    for name in ("volumes", "gigabytes", "instances", "cores", "ram"):
        conf.set_override(name, -1, group="quota")  # no quotas

    app = Embedded(conf)
    app.start()
    counts: collections.Counter[str] = collections.Counter()
    counting = threading.Event()
    tracing = threading.Event()

    def _statement(sql: str) -> None:
        if counting.is_set() and not sql.startswith("BEGIN"):
            counts["commits" if sql == "COMMIT" else "statements"] += 1
        if tracing.is_set():
            print(f"  [{threading.current_thread().name}] {' '.join(sql.split())[:150]}")

    # every statement SQLite runs, prepared ones included (they bypass
    # SQLAlchemy's events); set on each pool checkout
    @event.listens_for(app.db.engine.pool, "checkout")
    def _checkout(dbapi_conn: Any, *_: Any) -> None:
        dbapi_conn.set_trace_callback(_statement)

    vport, cport = app.api.servers[0].port, app.api.servers[1].port
    http = httpx.Client(headers={"X-Auth-Token": service_token(conf)}, timeout=30)
    volume = f"http://127.0.0.1:{vport}/v3"
    compute = f"http://127.0.0.1:{cport}/v2.1"
    sid = http.post(f"{compute}/servers", json={"server": {"name": "profile",
                                                           "flavorRef": "1"}}).json()[
        "server"]["id"]
    vid = http.post(f"{volume}/volumes", json={"volume": {"size": 1}}).json()["volume"]["id"]
    aurl = f"{compute}/servers/{sid}/os-volume_attachments"
    try:
        watch = sqlite3.connect(f"file:{state}/tether.db?mode=ro", uri=True,
                                isolation_level=None)
        wait_status(watch, vid, "available")
        deadline = time.monotonic() + 60
        while http.get(f"{compute}/servers/{sid}").json()["server"]["status"] != "ACTIVE":
            if time.monotonic() > deadline:
                raise RuntimeError("server not ACTIVE")
            time.sleep(0.05)

        def cycle() -> None:
            http.post(aurl, json={"volumeAttachment": {"volumeId": vid}}).raise_for_status()
            wait_status(watch, vid, "in-use")
            http.delete(f"{aurl}/{vid}").raise_for_status()
            wait_status(watch, vid, "available")

        cycle()
        if args.sql:
            tracing.set()
            cycle()
            tracing.clear()
        # first without the profiler: the service's CPU is the process's
        # minus what this (the client's) thread used
        counting.set()
        p0, t0 = time.process_time(), time.thread_time()
        threads0 = thread_cpu()
        for _ in range(args.cycles):
            cycle()
        threads1 = thread_cpu()
        service_cpu = (time.process_time() - p0) - (time.thread_time() - t0)
        counting.clear()
        yappi.set_clock_type("cpu")
        yappi.start(builtins=False)
        for _ in range(args.cycles):
            cycle()
        yappi.stop()
    finally:
        http.delete(f"{compute}/servers/{sid}")
        deadline = time.monotonic() + 30
        while http.get(f"{compute}/servers/{sid}").status_code != 404:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        app.stop()
    ops = 2 * args.cycles
    print(f"service CPU per operation: {service_cpu / ops * 1000:.2f} ms "
          "")
    by_thread: collections.Counter[str] = collections.Counter()
    for ident, (name, cpu) in threads1.items():
        if ident != threading.main_thread().ident:
            by_thread[re.sub(r"[-_]?\d+$", "", name)] += cpu - threads0.get(ident, (name, 0.0))[1]
    print("  by thread (ms per operation): " + ", ".join(
        f"{name} {cpu / ops * 1000:.2f}" for name, cpu in by_thread.most_common() if cpu > 0))
    print(f"SQL per operation: {counts['statements'] / ops:.1f} statements, "
          f"{counts['commits'] / ops:.1f} commits")
    # merge the service threads' function stats (not the client's)
    own: collections.Counter[str] = collections.Counter()
    tot: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    for t in yappi.get_thread_stats():
        if t.name == "_MainThread":
            continue
        for fs in yappi.get_func_stats(ctx_id=t.id):
            key = f"{fs.module.split('site-packages/')[-1]}:{fs.lineno} {fs.name}"
            own[key] += fs.tsub
            tot[key] += fs.ttot
            calls[key] += fs.ncall
    total = sum(own.values())
    print(f"profile shares (yappi inflates times): {'own %':>6} {'tot %':>6} {'calls/op':>8}")
    for key, value in own.most_common(args.top):
        print(f"{value / total * 100:6.1f} {tot[key] / total * 100:6.1f} "
              f"{calls[key] / ops:8.1f}  {key}")
    print("tether functions by total share:")
    mine = [k for k in tot if "/tether/" in k]
    for key in sorted(mine, key=lambda k: -tot[k])[:args.top]:
        print(f"{own[key] / total * 100:6.1f} {tot[key] / total * 100:6.1f} "
              f"{calls[key] / ops:8.1f}  {key.split('/tether/')[-1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
