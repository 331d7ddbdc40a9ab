#!/usr/bin/env python3
"""N attaches and N detaches in flight at once, through Tether's API and as
bare calls (the floor), for N = 1, 10, 50 by default.

Setup: ``tether serve`` runs as its own process (its own state directory
under a temporary one, free ports, ``[compute] device_detach_timeout = 20``,
``device_detach_attempts = 3``) from this checkout (``--serve-from`` another);
``--servers`` (10) servers and max(N) volumes of 1 GiB are created through the
APIs, and as many guests for the floor directly in libvirt (the same QEMU
guests without an OS, volumes on virtio-scsi).  Volume i goes to server
i mod servers, so N = 50 puts 5 volumes on each.

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
once).  Each round runs every N once for both paths, the
order alternating (tether first, then floor first) so the machine's drift
hits both alike; one unrecorded wave of each warms every guest first.

Afterwards every volume is checked through the API to be ``available`` with
no attachment; servers and volumes are deleted through the API, serve is
stopped, the floor's guests, secrets and targets removed, the temporary
directory deleted, and libvirt and tgtd are checked for anything left with
one of this run's ids.  Warnings and errors in serve's log are printed (and
the log is kept beside the results when there are any).  JSON goes to
bench/results/concurrency-<time>.json.

Usage: PYTHONPATH=. .venv/bin/python bench/concurrency.py [--n 1,10,50] [--rounds 3]
       [--servers 10] [--api-threads 8] [--serve-from DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import libvirt
from attach_detach import cpu_seconds, pct

from tether import daemons
from tether.connectors.initiator import host_initiator_iqn
from tether.virt import driver as virt
from tether.virt.libvirt.driver import LibvirtDriver
from tether.virt.libvirt.xml import SECRET_USAGE_PREFIX
from tether.volume.manager import new_chap
from tether.volume.targets.base import TargetError
from tether.volume.targets.tgt import parse_show
from tether.volume.targets.tgtadm import Request, SocketAdmin

WATCH = 0.005  # seconds between looks at the service's database
FLOOR_TID = 5000  # far above Tether's tids (it counts up from 1) and attach_detach's
FLOOR_IQN = "iqn.2010-10.org.tether:bench-concurrency-"
LETTERS = "bcdefghijklmnopqrstuvwxyz"  # sda is free: what Tether would pick first is sdb
COMPUTE = {"OpenStack-API-Version": "compute 2.89"}


@dataclass
class Op:
    """One attach or detach: when it was sent and when it ended (epoch s)."""

    volume: str
    server: str
    sent: float
    end: float | None = None
    answered: float | None = None  # tether: the HTTP answer
    status: int | None = None  # tether: the HTTP status
    error: str | None = None  # refused, failed, or never ended

    @property
    def latency(self) -> float:
        assert self.end is not None
        return self.end - self.sent


def at_once(pool: ThreadPoolExecutor, calls: list[Callable[[], Op]]) -> list[Op]:
    """Run ``calls`` in the pool's threads, released together."""
    if not calls:
        return []
    barrier = threading.Barrier(len(calls))

    def go(call: Callable[[], Op]) -> Op:
        barrier.wait(timeout=60)
        return call()

    futures = [pool.submit(go, call) for call in calls]
    try:
        return [f.result() for f in futures]
    except BaseException:
        barrier.abort()
        raise


def guests_settled(driver: LibvirtDriver, ids: list[str], timeout: float = 120) -> float:
    """Wait until the guests have settled; how long it took.  A guest without
    an OS spends its first ~20 s in the firmware looking for something to boot,
    at ~13% of a core each (20 guests: more than this machine's two cores),
    then ~1%: the waves must not start before."""
    pids = []
    for i in ids:
        try:
            pids.append(cpu_pid(driver.conn().lookupByUUIDString(i).name()))
        except (libvirt.libvirtError, OSError) as exc:  # seen once, not explained yet
            print(f"  ! guest {i} has no domain or QEMU process: {exc}", flush=True)
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        c0 = sum(cpu_seconds(p) for p in pids)
        time.sleep(2)
        if (sum(cpu_seconds(p) for p in pids) - c0) / 2 < 0.02 * len(pids):
            break
    return time.monotonic() - started


def cpu_pid(domain: str) -> int:
    with open(f"/run/libvirt/qemu/{domain}.pid") as f:
        return int(f.read().strip())


def listens(pid: int, ports: list[int]) -> bool:
    """Whether process ``pid`` itself listens on every one of ``ports``."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    mine = set()
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                mine.add(int(cols[1].rsplit(":", 1)[1], 16))
    return set(ports) <= mine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def epoch(db_time: str) -> float:
    return dt.datetime.fromisoformat(db_time).replace(tzinfo=dt.UTC).timestamp()


class Tether:
    """``tether serve`` in its own process, driven through its APIs."""

    def __init__(self, state: str, code: str, api_threads: int) -> None:
        self.state, self.code = state, code
        self.proc: subprocess.Popen[bytes] | None = None
        self.created: tuple[list[str], list[str]] = ([], [])  # server ids, volume ids
        ports = self.ports = [free_port() for _ in range(3)]
        self.conf = (f"[api]\ncompute_port = {ports[0]}\nvolume_port = {ports[1]}\n"
                     f"image_port = {ports[2]}\nthreads = {api_threads}\n"
                     "[compute]\ndevice_detach_timeout = 20\ndevice_detach_attempts = 3\n")
        self.compute = f"http://127.0.0.1:{ports[0]}/v2.1"
        self.volume = f"http://127.0.0.1:{ports[1]}/v3"

    def start(self) -> None:
        state = self.state
        path = os.path.join(state, "tether.conf")
        with open(path, "w") as f:
            f.write(self.conf)
        with open(os.path.join(state, "serve.out"), "wb") as out:
            # its own session: a Ctrl-C reaches only the benchmark, which then
            # cleans up through the API before stopping serve
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from tether.cli import main; main()",
                 "--config-file", path, "--state-dir", state, "serve"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONPATH": self.code})
        deadline = time.monotonic() + 60
        while True:
            # the ports must be serve's own: on a shared host another process
            # may take a free port between our pick and serve's bind
            with contextlib.suppress(httpx.HTTPError, OSError):
                if listens(self.proc.pid, self.ports) and httpx.get(
                        self.volume, timeout=1).status_code == 200:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tether serve did not come up: see {state}/serve.out")
            time.sleep(0.1)
        with open(os.path.join(state, "service_token")) as f:
            token = f.read().strip()
        self.http = httpx.Client(timeout=120, headers={"X-Auth-Token": token},
                                 limits=httpx.Limits(max_connections=256,
                                                     max_keepalive_connections=256))
        self.db = sqlite3.connect(f"file:{state}/tether.db?mode=ro", uri=True,
                                  isolation_level=None, check_same_thread=False)

    def cpu(self) -> float:
        assert self.proc is not None
        return cpu_seconds(self.proc.pid)

    # -- setup and teardown through the API ---------------------------------------

    def create(self, servers: int, volumes: int) -> None:
        """Servers and volumes, recorded in ``created`` as they are made."""
        sids, vids = self.created
        for i in range(servers):
            sids.append(self.http.post(f"{self.compute}/servers", json={"server": {
                "name": f"bench-concurrency-{i}", "flavorRef": "1"}}).raise_for_status(
                ).json()["server"]["id"])
        for i in range(volumes):
            vids.append(self.http.post(f"{self.volume}/volumes", json={"volume": {
                "size": 1, "name": f"bench-concurrency-{i}"}}).raise_for_status().json()[
                "volume"]["id"])
        self.until(lambda: all(self.http.get(f"{self.compute}/servers/{s}").json()[
            "server"]["status"] == "ACTIVE" for s in sids), "servers ACTIVE")
        self.until(lambda: all(self.volume_(v)["status"] == "available" for v in vids),
                   "volumes available")

    def volume_(self, vid: str) -> dict[str, Any]:
        vol: dict[str, Any] = self.http.get(f"{self.volume}/volumes/{vid}").raise_for_status(
            ).json()["volume"]
        return vol

    @staticmethod
    def until(check: Callable[[], bool], what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}")
            time.sleep(0.1)

    def check_detached(self, vids: list[str]) -> list[str]:
        """What is wrong with the volumes' final state (nothing, we hope)."""
        wrong = []
        for vid in vids:
            vol = self.volume_(vid)
            if vol["status"] != "available" or vol["attachments"]:
                wrong.append(f"volume {vid} ended {vol['status']} with attachments "
                             f"{vol['attachments']}")
        return wrong

    def delete(self, sids: list[str], vids: list[str]) -> None:
        """Detach whatever is still attached, then delete servers and volumes."""
        for vid in vids:
            with contextlib.suppress(httpx.HTTPError, KeyError):
                for att in self.volume_(vid)["attachments"]:
                    self.http.delete(f"{self.compute}/servers/{att['server_id']}/"
                                     f"os-volume_attachments/{vid}", headers=COMPUTE)
        for sid in sids:
            self.http.delete(f"{self.compute}/servers/{sid}")
        self.until(lambda: all(self.http.get(f"{self.compute}/servers/{s}").status_code == 404
                               for s in sids), "servers deleted")
        for vid in vids:
            self.http.delete(f"{self.volume}/volumes/{vid}")
        self.until(lambda: all(self.http.get(f"{self.volume}/volumes/{v}").status_code == 404
                               for v in vids), "volumes deleted")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(AttributeError):  # it never answered
            self.http.close()
            self.db.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- one wave ---------------------------------------------------------------------

    def request(self, method: str, url: str, vid: str, sid: str, **kw: Any) -> Op:
        op = Op(vid, sid, time.time())
        try:
            r = self.http.request(method, url, headers=COMPUTE, **kw)
            op.status = r.status_code
            if r.status_code >= 300:
                op.error = f"{method} {url} answered {r.status_code}: {r.text[:600]}"
        except httpx.HTTPError as exc:
            op.error = f"{method} {url} got no answer: {type(exc).__name__}: {exc}"
        op.answered = time.time()
        return op

    def attach(self, sid: str, vid: str) -> Op:
        return self.request("POST", f"{self.compute}/servers/{sid}/os-volume_attachments",
                            vid, sid, json={"volumeAttachment": {"volumeId": vid}})

    def detach(self, sid: str, vid: str) -> Op:
        return self.request("DELETE",
                            f"{self.compute}/servers/{sid}/os-volume_attachments/{vid}",
                            vid, sid)

    def wave(self, pool: ThreadPoolExecutor, kind: str, pairs: list[tuple[str, str]],
             timeout: float) -> tuple[list[Op], float]:
        """N requests at once; the operations, and the service's CPU over the wave."""
        after = self.db.execute("SELECT coalesce(max(id), 0) FROM instance_actions"
                                ).fetchone()[0]
        c0 = self.cpu()
        call = self.attach if kind == "attach" else self.detach
        ops = at_once(pool, [lambda s=s, v=v: call(s, v) for s, v in pairs])
        self.settle(ops, "in-use" if kind == "attach" else "available", f"{kind}_volume",
                    after, timeout)
        return ops, self.cpu() - c0

    def settle(self, ops: list[Op], target: str, action: str, after: int,
               timeout: float) -> None:
        """Wait until every accepted operation ended (its volume reached
        ``target``, or its action failed) and every action is finished."""
        pending = {op.volume: op for op in ops if op.error is None}
        deadline = time.monotonic() + timeout
        while True:
            marks = ",".join("?" * len(pending))
            for vid, status, changed in self.db.execute(
                    f"SELECT id, status, updated_at FROM volumes WHERE id IN ({marks})",
                    list(pending)).fetchall() if pending else ():
                if status == target:
                    pending.pop(vid).end = epoch(changed)
            actions = self.db.execute(
                "SELECT id, resource_id, status, finish_time FROM instance_actions "
                "WHERE id > ? AND action = ?", (after, action)).fetchall()
            for aid, vid, status, _ in actions:
                if status == "failed" and vid in pending:
                    pending.pop(vid).error = f"{action} of {vid} failed: {self.why(aid)}"
            if not pending and all(a[3] is not None for a in actions):
                return
            if time.monotonic() > deadline:
                for vid, op in pending.items():
                    now = self.db.execute("SELECT status FROM volumes WHERE id = ?",
                                          (vid,)).fetchone()[0]
                    op.error = f"volume {vid} not {target} after {timeout:g}s: {now}"
                open_ = [f"{a[0]}({a[1]}: {a[2]})" for a in actions if a[3] is None]
                if open_:
                    print(f"  actions still open after {timeout:g}s: {', '.join(open_)}")
                return
            time.sleep(WATCH)

    def why(self, action_id: int) -> str:
        rows = self.db.execute("SELECT event, details FROM instance_action_events WHERE "
                               "action_id = ? AND result = 'Error'", (action_id,)).fetchall()
        return "; ".join(f"{event}: {details}" for event, details in rows) or "(no step error)"


@dataclass
class FloorVolume:
    tid: int
    path: str
    guest: str
    dev: str
    vid: str = ""  # a fresh one per attach (its own secret and IQN)
    user: str = ""


class Floor:
    """The same physical work as bare calls: tgtd's socket and libvirt."""

    def __init__(self, driver: LibvirtDriver, state: str) -> None:
        self.driver = driver
        self.state = state
        # blocking connects, as tgtadm's: with the socket's timeout set, a connect
        # fails at once (EAGAIN) while tgtd's accept backlog (32) is full
        self.admin = SocketAdmin(timeout=None)  # type: ignore[arg-type]
        self.attached: set[int] = set()
        self.initiator = host_initiator_iqn(None, state, "bench")
        self.guests: list[str] = []
        self.vids: list[str] = []  # every one used, for the cleanup and the check
        self.volumes: list[FloorVolume] = []

    def create(self, guests: int, volumes: int) -> None:
        for _ in range(guests):
            guest = str(uuid.uuid4())
            self.guests.append(guest)
            self.driver.spawn(virt.ServerSpec(guest, f"tether-bench-{guest}", 1, 64))
        for i in range(volumes):
            path = os.path.join(self.state, f"floor-volume-{i}")
            with open(path, "wb") as f:
                f.truncate(1 << 30)
            self.volumes.append(FloorVolume(FLOOR_TID + i, path, self.guests[i % guests],
                                            "sd" + LETTERS[i // guests]))

    def tgt(self, op: str, mode: str, **kw: Any) -> None:
        self.admin.request(Request(op, mode, **kw))

    def attach(self, i: int) -> Op:
        v = self.volumes[i]
        v.vid = str(uuid.uuid4())
        self.vids.append(v.vid)
        chap = new_chap()
        v.user = chap.username
        user = (("user", chap.username),)
        iqn = FLOOR_IQN + v.vid
        op = Op(v.vid, v.guest, time.time())
        try:
            self.tgt("new", "target", tid=v.tid, params=(("targetname", iqn),))
            self.tgt("new", "logicalunit", tid=v.tid, lun=1,
                     params=(("path", v.path), ("bstype", "rdwr")))
            self.tgt("new", "account", params=(*user, ("password", chap.password)),
                     secrets=(chap.password,))
            self.tgt("bind", "account", tid=v.tid, params=user)
            self.tgt("bind", "target", tid=v.tid, params=(("initiator-name", self.initiator),))
            secret = self.driver.define_chap_secret(v.vid, chap.username, chap.password)
            self.driver.attach_disk(v.guest, virt.DiskSpec(v.vid, v.dev, "scsi",
                                    virt.NetworkDiskSource(iqn, 1, "127.0.0.1", 3260,
                                                           self.initiator, chap.username,
                                                           secret)))
            op.end = time.time()
            self.attached.add(i)
        except Exception as exc:
            op.error = f"floor attach {i}: {type(exc).__name__}: {exc}"
            self.undo(v)
        return op

    def detach(self, i: int) -> Op:
        v = self.volumes[i]
        self.attached.discard(i)
        op = Op(v.vid, v.guest, time.time())
        try:
            self.driver.detach_disk(v.guest, v.vid, timeout=20, attempts=3)
            self.driver.undefine_chap_secret(v.vid)
            self.tgt("delete", "target", tid=v.tid, force=True)
            self.tgt("delete", "account", params=(("user", v.user),))
            op.end = time.time()
        except Exception as exc:
            op.error = f"floor detach {i}: {type(exc).__name__}: {exc}"
            self.undo(v)
        return op

    def undo(self, v: FloorVolume) -> None:
        """Whatever an attach or detach left of ``v``, so the next round starts clean."""
        for step in (lambda: self.driver.detach_disk(v.guest, v.vid, timeout=5, attempts=1),
                     lambda: self.driver.undefine_chap_secret(v.vid),
                     lambda: self.tgt("delete", "target", tid=v.tid, force=True),
                     lambda: self.tgt("delete", "account", params=(("user", v.user),))):
            with contextlib.suppress(Exception):
                step()

    def wave(self, pool: ThreadPoolExecutor, kind: str, n: int) -> list[Op]:
        """Attach volumes 0..n-1; or detach those of them that are attached."""
        if kind == "attach":
            return at_once(pool, [lambda i=i: self.attach(i) for i in range(n)])
        todo = sorted(i for i in self.attached if i < n)
        return at_once(pool, [lambda i=i: self.detach(i) for i in todo]) if todo else []

    def remove(self) -> None:
        """Guests, secrets, targets and accounts, whatever state they are in."""
        for guest in self.guests:
            with contextlib.suppress(Exception):
                self.driver.destroy(guest)
        for v in self.volumes:
            self.undo(v)
        for vid in self.vids:
            with contextlib.suppress(Exception):
                self.driver.undefine_chap_secret(vid)


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
    return out


def record(waves: list[dict[str, Any]], rnd: int, n: int, path: str, kind: str,
           ops: list[Op], cpu: float | None = None) -> None:
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
    waves.append(wave)
    for op in ops:
        if op.error:
            print(f"  ! {path} {kind} N={n} round {rnd + 1}: {op.error}", flush=True)


def ours(driver: LibvirtDriver, ids: set[str]) -> tuple[list[Any], list[Any], list[str]]:
    """Domains, secrets and tgtd targets (IQNs) carrying one of this run's ids."""
    conn = driver.conn()
    domains = [d for d in conn.listAllDomains() if d.UUIDString() in ids]
    secrets = [s for s in conn.listAllSecrets()
               if (s.usageID() or "").removeprefix(SECRET_USAGE_PREFIX) in ids]
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
                    ops, cpu = tether.wave(pool, kind, todo, args.timeout)
                    attached = {op.volume for op in ops if op.error is None}
                    record(waves, rnd, n, path, kind, ops, cpu)
            print(f"round {rnd + 1}/{args.rounds} N={n} done "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    return sids, vids, tether.check_detached(vids)


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
    driver = LibvirtDriver()
    pool = ThreadPoolExecutor(max_workers=max(ns), thread_name_prefix="wave")
    tether = Tether(state, args.serve_from, args.api_threads)
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
        tether.stop()
        problems = log_problems(state)
        swept = sweep(driver, set(sids) | set(vids) | set(floor.guests) | set(floor.vids))
        left = [f"{len(x)} {k}" for k, x in zip(("domains", "secrets", "targets"), ours(
            driver, set(sids) | set(vids) | set(floor.guests) | set(floor.vids)), strict=True)
            if x]
        if problems or raised:  # kept for a look at what went wrong
            for name in ("tether.log", "serve.out"):
                with contextlib.suppress(FileNotFoundError):
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


if __name__ == "__main__":
    sys.exit(main())
