#!/usr/bin/env python3
"""N attaches and N detaches in flight at once, through Tether's API and as
bare calls (the floor), for N = 1, 10, 50 by default.

Setup: ``tether serve`` runs as its own process (its own state directory
under a temporary one, free ports, ``[compute] device_detach_timeout = 20``,
``device_detach_attempts = 3``, a ``domain_prefix`` of the run's own for
revisions that have it) from this checkout (``--serve-from`` another);
``--servers`` (10) servers and max(N) volumes of 1 GiB are created through the
APIs, and as many guests for the floor directly in libvirt (the same QEMU
guests without an OS, volumes on virtio-scsi).  Volume i goes to server
i mod servers, so N = 50 puts 5 volumes on each.  The waves start once the
guests' firmware has settled (a fresh guest without an OS burns ~13% of a
core for ~20 s looking for something to boot).

A wave is N operations sent at once from N threads (released together by a
barrier), and it ends when all of them have ended:

* tether: N ``POST /v2.1/servers/{id}/os-volume_attachments`` (microversion
  2.89) → each volume ``in-use``; then N ``DELETE .../{volume_id}`` → each
  ``available``.  An operation lasts from its request being sent to the
  volume's ``updated_at`` (the moment the service committed the end state;
  same host, same clock).  The benchmark sees the end by reading the
  service's SQLite file read-only every 5 ms (WAL: it never blocks the
  service, and costs it nothing, unlike polling the API); the wave also waits
  until every instance action it started is finished, so an operation that
  failed after its request was accepted (the action ends in error, the volume
  goes back) is seen and reported, and the service's CPU over the wave covers
  all of its work.  Every answer that is not 2xx is counted and printed with
  its body.
* floor: the same physical work as bare calls in N threads of this process:
  five requests on tgtd's management socket (target, LUN, CHAP account,
  account bind, initiator bind), the libvirt secret, persistent + live attach;
  then live + persistent detach waited on libvirt's device-removed event,
  secret removal, two socket requests (target, account).  Nothing is
  serialised but what tgtd (one thread) and libvirt (one job per domain at a
  time) serialise themselves; Tether's host also runs one operation per server
  at a time, so N = 50 is five in a row on each server there.

Per N and operation: p50 / p95 of the operations' latencies (all rounds
pooled), throughput (operations ended per second over a wave, from the first
request sent to the last end: the median over rounds), the tether/floor
ratios, the ``tether serve`` process's CPU per operation (its POSIX CPU
clock, all threads, over the wave / N: median over rounds) and the refused
or failed operations, and the p50 of the time the API took to answer a
request (``answer``: waitress queues what its ``[api] threads`` cannot take at
once).  Below the table, where Tether's operations spent their time: the p50
of each step the operations recorded (``instance_action_events``), and of
``queued``, from the end of the API's step to the start of the host's first.
Each round runs every N once for both paths, the order alternating (tether
first, then floor first) so the machine's drift hits both alike; one
unrecorded wave of each warms every guest first.

Afterwards every volume is checked through the API to be ``available`` with
no attachment; servers and volumes are deleted through the API, serve is
stopped, the floor's guests, secrets and targets removed, the temporary
directory deleted, and libvirt and tgtd are checked for anything left with
one of this run's ids.  Warnings and errors in serve's log are printed,
grouped by message (and the log is kept beside the results when there are
any, or the run failed).  JSON goes to bench/results/concurrency-<time>.json.

Usage: PYTHONPATH=. .venv/bin/python bench/concurrency.py [--n 1,10,50] [--rounds 3]
       [--servers 10] [--api-threads 8] [--serve-from DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from attach_detach import pct
from concurrency_sides import LETTERS, Floor, Op, Tether, guests_settled

from tether import daemons
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.targets.base import TargetError
from tether.volume.targets.tgt import parse_show
from tether.volume.targets.tgtadm import Request, SocketAdmin


def summary(waves: list[dict[str, Any]], n: int, path: str, kind: str) -> dict[str, Any]:
    mine = [w for w in waves if (w["n"], w["path"], w["kind"]) == (n, path, kind)]
    lat = [x for w in mine for x in w["latency_s"]]
    errors = [e for w in mine for e in w["errors"]]
    out = {"p50_ms": pct(lat, 0.5) * 1000 if lat else None,
           "p95_ms": pct(lat, 0.95) * 1000 if lat else None,
           "ops_per_s": statistics.median(w["ops_per_s"] for w in mine) if mine else 0.0,
           "ops": len(lat) + len(errors),
           "refused": sum(1 for e in errors if e["status"] is not None and e["status"] >= 300),
           "failed": sum(1 for e in errors if e["status"] is None or e["status"] < 300)}
    if path == "tether" and mine:
        out["cpu_ms_per_op"] = statistics.median(w["cpu_ms_per_op"] for w in mine)
        out["answer_p50_ms"] = pct([x for w in mine for x in w["answer_s"]], 0.5) * 1000
        steps: dict[str, list[float]] = {}
        for w in mine:
            for event, took in w["steps_s"].items():
                steps.setdefault(event, []).extend(took)
        out["steps_p50_ms"] = {e: pct(t, 0.5) * 1000 for e, t in steps.items() if t}
    return out


def record(waves: list[dict[str, Any]], rnd: int, n: int, path: str, kind: str,
           ops: list[Op], cpu: float | None = None,
           steps: dict[str, list[float]] | None = None) -> None:
    done = [op for op in ops if op.error is None and op.end is not None]
    span = max(op.latency + op.sent for op in done) - min(op.sent for op in ops) if done else 0
    wave: dict[str, Any] = {
        "round": rnd, "n": n, "path": path, "kind": kind,
        "latency_s": [op.latency for op in done],
        "ops_per_s": len(done) / span if span > 0 else 0.0,
        "errors": [asdict(op) for op in ops if op.error is not None]}
    if cpu is not None:
        wave["cpu_ms_per_op"] = cpu / len(ops) * 1000 if ops else 0.0
        wave["answer_s"] = [op.answered - op.sent for op in ops if op.answered]
        wave["steps_s"] = steps or {}
    waves.append(wave)
    for op in ops:
        if op.error:
            print(f"  ! {path} {kind} N={n} round {rnd + 1}: {op.error}", flush=True)


def ours(driver: LibvirtDriver, ids: set[str]) -> tuple[list[Any], list[Any], list[str]]:
    """Domains, secrets and tgtd targets (IQNs) carrying one of this run's ids."""
    conn = driver.conn()
    domains = [d for d in conn.listAllDomains() if d.UUIDString() in ids]
    secrets = [s for s in conn.listAllSecrets()
               if (s.usageID() or "")[-36:] in ids]  # <prefix>volume-<id>, any prefix
    targets: list[str] = []
    with contextlib.suppress(TargetError):
        shown = parse_show(SocketAdmin().request(Request("show", "target")))
        targets = [iqn for iqn in shown if any(i in iqn for i in ids)]
    return domains, secrets, targets


def sweep(driver: LibvirtDriver, ids: set[str]) -> list[str]:
    """Remove what is left with one of this run's ids (serve died, or did not
    clean up: worth reporting); what it found."""
    domains, secrets, targets = ours(driver, ids)
    found = [f"domain {d.name()}" for d in domains] + [
        f"secret {s.usageID()}" for s in secrets] + [f"tgt target {t}" for t in targets]
    for d in domains:
        with contextlib.suppress(Exception):
            driver.destroy(d.UUIDString())
    for sec in secrets:
        with contextlib.suppress(Exception):
            sec.undefine()
    if targets:
        admin = SocketAdmin()
        shown = parse_show(admin.request(Request("show", "target")))
        for iqn in targets:
            with contextlib.suppress(TargetError):
                admin.request(Request("delete", "target", tid=shown[iqn].tid, force=True))
    return found


def log_problems(state: str) -> dict[str, dict[str, Any]]:
    """serve's warnings and errors, grouped by message (numbers masked): how
    many, and the first one in full.  serve.out repeats the log on stderr;
    only what never reached the log (a traceback at start) is taken from it."""
    found: dict[str, dict[str, Any]] = {}

    def add(key: str, line: str) -> None:
        entry = found.setdefault(key, {"count": 0, "first": line})
        entry["count"] += 1

    with contextlib.suppress(FileNotFoundError), open(os.path.join(state, "tether.log")) as f:
        for line in f:
            m = re.match(r"\S+ \S+ (WARNING|ERROR|CRITICAL) (.*)", line)
            if m:
                add(re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?", "#", m.group(0)[24:]),
                    line.rstrip())
    with contextlib.suppress(FileNotFoundError), open(os.path.join(state, "serve.out")) as f:
        for line in f:
            if line.startswith("Traceback"):
                add("serve.out: Traceback", line.rstrip())
    return found


def revision(checkout: str) -> str:
    """The commit serve ran, with ``+dirty`` for uncommitted changes."""
    git = ["git", "-C", checkout]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "?"
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=False).stdout.strip()
    return head + ("+dirty" if dirty else "")


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, ns: list[int], tether: Tether, floor: Floor,
        pool: ThreadPoolExecutor, waves: list[dict[str, Any]], started: float
        ) -> tuple[list[str], list[str], list[str]]:
    """Setup, warm-up and the rounds; servers, volumes and what is wrong at the end."""
    tether.start()
    assert tether.proc is not None
    print(f"tether serve (pid {tether.proc.pid}) from {args.serve_from}; creating "
          f"{args.servers} servers, {max(ns)} volumes, {args.servers} floor guests", flush=True)
    sids, vids = tether.created
    tether.create(args.servers, max(ns))
    print(f"  servers ACTIVE and volumes available at {time.monotonic() - started:.0f}s",
          flush=True)
    floor.create(args.servers, max(ns))
    settled = guests_settled(floor.driver, sids + floor.guests)
    print(f"  floor guests up; all guests' firmware settled after another {settled:.0f}s",
          flush=True)

    def pairs(n: int) -> list[tuple[str, str]]:
        return [(sids[i % len(sids)], vids[i]) for i in range(n)]

    warm = min(args.servers, max(ns))  # every guest used once, unrecorded
    attached = {v for _, v in pairs(warm)}
    for kind in ("attach", "detach"):
        for op in tether.wave(pool, kind, pairs(warm), args.timeout)[0]:
            if op.error:
                print(f"  ! warm-up tether {kind}: {op.error}")
        for op in floor.wave(pool, kind, warm):
            if op.error:
                print(f"  ! warm-up floor {kind}: {op.error}")
    for rnd in range(args.rounds):
        for j, n in enumerate(ns):
            order = ("tether", "floor") if (rnd + j) % 2 == 0 else ("floor", "tether")
            for path in order:
                for kind in ("attach", "detach"):
                    if path == "floor":
                        record(waves, rnd, n, path, kind, floor.wave(pool, kind, n))
                        continue
                    todo = [(s, v) for s, v in pairs(n) if kind == "attach" or v in attached]
                    ops, cpu, steps = tether.wave(pool, kind, todo, args.timeout)
                    attached = {op.volume for op in ops if op.error is None}
                    record(waves, rnd, n, path, kind, ops, cpu, steps)
            print(f"round {rnd + 1}/{args.rounds} N={n} done "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    return sids, vids, tether.check_detached(sids, vids)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="1,10,50", help="operations in flight at once")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--servers", type=int, default=10)
    ap.add_argument("--api-threads", type=int, default=8,
                    help="[api] threads of tether serve (its default is 8)")
    ap.add_argument("--timeout", type=float, default=180, help="seconds a wave may take")
    ap.add_argument("--serve-from", metavar="DIR",
                    default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    help="checkout whose tether package serve runs (default: this one)")
    args = ap.parse_args()
    ns = [int(x) for x in args.n.split(",")]
    if max(ns) > args.servers * len(LETTERS):
        ap.error(f"at most {args.servers * len(LETTERS)} volumes on {args.servers} servers")
    signal.signal(signal.SIGTERM, _interrupt)
    started, load0 = time.monotonic(), os.getloadavg()
    daemons.ensure_libvirtd()
    daemons.ensure_tgtd(0)
    tmp = tempfile.mkdtemp(prefix="tether-bench-concurrency-")
    state = os.path.join(tmp, "serve")
    os.makedirs(state)
    # what both sides name in libvirt starts with a prefix of this run's own:
    # `tether audit --repair` run by someone else on this libvirtd (with the
    # default prefix) then takes none of it for a stray and removes it
    # (revisions without [compute] domain_prefix ignore the option)
    prefix = f"tether-bench-{uuid.uuid4().hex[:8]}-"
    driver = LibvirtDriver(domain_prefix=prefix)
    pool = ThreadPoolExecutor(max_workers=max(ns), thread_name_prefix="wave")
    tether = Tether(state, args.serve_from, args.api_threads, prefix)
    floor = Floor(driver, tmp)
    waves: list[dict[str, Any]] = []
    wrong: list[str] = []
    stamp = time.strftime("%Y%m%dT%H%M%S")
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(folder, exist_ok=True)
    try:
        sids, vids, wrong = run(args, ns, tether, floor, pool, waves, started)
    finally:
        raised = sys.exc_info()[0] is not None
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the cleanup runs to its end
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("cleaning up", flush=True)
        pool.shutdown(wait=True, cancel_futures=True)
        floor.remove()
        sids, vids = tether.created
        if tether.proc is not None and tether.proc.poll() is None:
            try:
                tether.delete(sids, vids)
            except Exception as exc:
                wrong.append(f"cleanup through the API failed: {exc}")
                print(f"CLEANUP THROUGH THE API FAILED: {exc}", flush=True)
        tether.stop()
        problems = log_problems(state)
        swept = sweep(driver, set(sids) | set(vids) | set(floor.guests) | set(floor.vids))
        left = [f"{len(x)} {k}" for k, x in zip(("domains", "secrets", "targets"), ours(
            driver, set(sids) | set(vids) | set(floor.guests) | set(floor.vids)), strict=True)
            if x]
        # kept for a look at what went wrong (serve.out repeats the log, and
        # says more only when serve could not start or died)
        for name in ("tether.log", *(("serve.out",) if raised else ())):
            with contextlib.suppress(FileNotFoundError):
                if problems or raised:
                    shutil.copy(os.path.join(state, name),
                                os.path.join(folder, f"concurrency-{stamp}-{name}"))
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"serve's log: {sum(p['count'] for p in problems.values())} warning/error "
              "lines" + (":" if problems else ""))
        for key, p in problems.items():
            print(f"  {p['count']:4d} x {key}\n         first: {p['first'][:300]}")
        print(f"had to be swept after serve stopped: {', '.join(swept) or 'nothing'}; "
              f"left after the sweep: {', '.join(left) or 'nothing'}", flush=True)
    wall = time.monotonic() - started
    table = {n: {f"{path}_{kind}": summary(waves, n, path, kind)
                 for path in ("tether", "floor") for kind in ("attach", "detach")}
             for n in ns}
    print_table(table, ns)
    for line in wrong:
        print(f"FINAL STATE WRONG: {line}")
    load1 = os.getloadavg()
    print(f"wall time {wall:.0f}s; load average {load0[0]:.2f} before, {load1[0]:.2f} after")
    out = {"n": ns, "rounds": args.rounds, "servers": args.servers,
           "api_threads": args.api_threads, "watch": "db", "serve_from": args.serve_from,
           "serve_revision": revision(args.serve_from),
           "serve_config": tether.conf, "table": table, "waves": waves,
           "final_state_wrong": wrong, "log_problems": problems, "swept": swept,
           "left_behind": left, "wall_s": wall, "loadavg_before": load0,
           "loadavg_after": load1}
    path = os.path.join(folder, f"concurrency-{stamp}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")
    return 1 if wrong or swept or left or any(w["errors"] for w in waves) else 0


def print_table(table: dict[int, dict[str, dict[str, Any]]], ns: list[int]) -> None:
    def ms(v: float | None) -> str:
        return "     -" if v is None else f"{v:6.1f}"

    print(f"\n{'N':>3} {'op':6} | {'tether p50 / p95 ms':>19} | {'floor p50 / p95 ms':>19} | "
          f"{'p50 x':>5} | {'tether op/s':>11} {'floor op/s':>10} {'x':>5} | "
          f"{'CPU/op ms':>9} | {'refused':>7} | {'failed t/f':>10} | {'answer p50':>10}")
    for n in ns:
        for kind in ("attach", "detach"):
            t, f = table[n][f"tether_{kind}"], table[n][f"floor_{kind}"]
            ratio = t["p50_ms"] / f["p50_ms"] if t["p50_ms"] and f["p50_ms"] else float("nan")
            thr = t["ops_per_s"] / f["ops_per_s"] if f["ops_per_s"] else float("nan")
            print(f"{n:>3} {kind:6} | {ms(t['p50_ms'])} / {ms(t['p95_ms'])}    | "
                  f"{ms(f['p50_ms'])} / {ms(f['p95_ms'])}    | {ratio:5.2f} | "
                  f"{t['ops_per_s']:11.1f} {f['ops_per_s']:10.1f} {thr:5.2f} | "
                  f"{t.get('cpu_ms_per_op', float('nan')):9.1f} | {t['refused']:7d} | "
                  f"{t['failed']:4d} / {f['failed']:<3d} | "
                  f"{t.get('answer_p50_ms', float('nan')):7.1f} ms")

    print("\nwhere a tether operation's time went, p50 ms (steps nest; queued: API step end"
          " -> first host step)")
    for n in ns:
        for kind in ("attach", "detach"):
            steps = table[n][f"tether_{kind}"].get("steps_p50_ms", {})
            print(f"{n:>3} {kind:6} " + "  ".join(f"{e.split(':')[-1]} {v:.1f}"
                                                    for e, v in steps.items()))

if __name__ == "__main__":
    sys.exit(main())
