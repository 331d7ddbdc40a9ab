#!/usr/bin/env python3
"""Attach/detach through Tether's API against the same work done directly.

Both run in one process, interleaved cycle by cycle so the machine's noise
hits them alike:

* direct: what the job physically needs, as bare calls: five tgtadm commands
  to export (target, LUN, CHAP account, account bind, initiator bind), the
  libvirt secret, persistent + live attach of the iSCSI network disk; then
  persistent + live detach waited on libvirt's device-removed event, secret
  removal, two tgtadm commands to unexport (target, account);
* socket: the same, with the seven tgtd requests sent on tgtd's management
  socket instead of forking tgtadm (as Tether does where it can): the
  stricter floor, reported beside the issue's tgtadm baseline;
* tether: POST os-volume_attachments → volume ``in-use``; DELETE
  os-volume_attachments → volume ``available``.  The end of an operation is
  the volume's ``updated_at``: the moment the service committed the new
  status (same host, same clock).  The benchmark learns that the status
  changed by reading the service's SQLite database (read-only, every 5 ms;
  WAL lets a reader in another process look without blocking the service),
  so waiting costs the service nothing.  ``--watch api`` polls the Block
  Storage API every 20 ms instead (the old way): each poll costs the service
  CPU, measured afterwards and subtracted, less exactly.

Tether runs as its own process (``tether serve``), so its CPU time is read
from that process's POSIX CPU clock (all threads, to the nanosecond): the
CPU per operation is the service's CPU over a cycle (minus the polls', with
``--watch api``), halved.  After the cycles the volume is checked through the
API to be ``available`` with no attachment.
Prints p50/p95 of each, the ratios and the CPU; writes JSON under
bench/results/.

Usage: .venv/bin/python bench/attach_detach.py [--cycles 30] [--watch db|api] [--serve-from DIR]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime as dt
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import httpx

from tether import daemons
from tether.connectors.initiator import host_initiator_iqn
from tether.executor import ProcessRunner
from tether.virt import driver as virt
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.manager import new_chap
from tether.volume.targets.tgtadm import CommandAdmin, Request, SocketAdmin, TgtAdmin

COMPUTE_PORT, VOLUME_PORT, IMAGE_PORT = 18774, 18776, 19292
POLL = 0.020  # --watch api
WATCH = 0.005  # --watch db


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def cpu_seconds(pid: int) -> float:
    """CPU time of a whole process (all its threads, live and ended), to the
    nanosecond: its POSIX CPU clock.  /proc/<pid>/stat counts in clock ticks
    (10 ms here), as coarse as a whole cycle's CPU."""
    clock = ctypes.c_int()
    if _libc.clock_getcpuclockid(pid, ctypes.byref(clock)) != 0:
        raise OSError(ctypes.get_errno(), f"no CPU clock for process {pid}")
    return time.clock_gettime(clock.value)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


DIRECT_TID = 4000  # far above the tids Tether allocates on the same tgtd


class Direct:
    """The physical floor: bare tgtd requests and libvirt calls, no control
    plane.  ``admin`` is how the requests reach tgtd: the tgtadm command (the
    issue's baseline) or tgtd's socket (what Tether itself uses where it can)."""

    def __init__(self, driver: LibvirtDriver, server: str, path: str, initiator: str,
                 admin: TgtAdmin) -> None:
        self.driver, self.server, self.path, self.initiator = driver, server, path, initiator
        self.admin = admin

    def tgt(self, op: str, mode: str, **kw: Any) -> None:
        self.admin.request(Request(op, mode, **kw))

    def cycle(self) -> tuple[float, float]:
        vid = str(uuid.uuid4())
        chap = new_chap()
        iqn = f"iqn.2010-10.org.tether:bench-{vid}"
        user = (("user", chap.username),)
        t0 = time.perf_counter()
        self.tgt("new", "target", tid=DIRECT_TID, params=(("targetname", iqn),))
        self.tgt("new", "logicalunit", tid=DIRECT_TID, lun=1,
                 params=(("path", self.path), ("bstype", "rdwr")))
        self.tgt("new", "account", params=(*user, ("password", chap.password)))
        self.tgt("bind", "account", tid=DIRECT_TID, params=user)
        self.tgt("bind", "target", tid=DIRECT_TID,
                 params=(("initiator-name", self.initiator),))
        secret = self.driver.define_chap_secret(vid, chap.username, chap.password)
        self.driver.attach_disk(self.server, virt.DiskSpec(
            vid, "sdb", "scsi", virt.NetworkDiskSource(
                iqn, 1, "127.0.0.1", 3260, self.initiator, chap.username, secret)))
        attach = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.driver.detach_disk(self.server, vid, timeout=20, attempts=3)
        self.driver.undefine_chap_secret(vid)
        self.tgt("delete", "target", tid=DIRECT_TID, force=True)
        self.tgt("delete", "account", params=user)
        return attach, time.perf_counter() - t1


class Api:
    def __init__(self, token: str, database: str | None = None) -> None:
        self.http = httpx.Client(timeout=60, headers={"X-Auth-Token": token})
        self.compute = f"http://127.0.0.1:{COMPUTE_PORT}/v2.1"
        self.volume = f"http://127.0.0.1:{VOLUME_PORT}/v3"
        self.polls = 0
        # where to watch for the end of an operation: the service's database
        self.db = sqlite3.connect(f"file:{database}?mode=ro", uri=True,
                                  isolation_level=None) if database else None

    def volume_(self, vid: str) -> dict[str, Any]:
        self.polls += 1
        r = self.http.get(f"{self.volume}/volumes/{vid}",
                          headers={"OpenStack-API-Version": "volume 3.71"})
        vol: dict[str, Any] = r.json()["volume"]
        return vol

    def status(self, vid: str) -> str:
        return str(self.volume_(vid)["status"])

    def wait(self, vid: str, status: str, timeout: float = 60) -> float:
        """Wait for ``status``; return when the service set it (epoch seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.db is not None:
                now, changed = self.db.execute(
                    "SELECT status, updated_at FROM volumes WHERE id = ?", (vid,)).fetchone()
            else:
                vol = self.volume_(vid)
                now, changed = vol["status"], vol["updated_at"]
            if now == status:
                return dt.datetime.fromisoformat(changed).replace(tzinfo=dt.UTC).timestamp()
            if time.monotonic() > deadline:
                raise RuntimeError(f"volume {vid} never became {status}")
            time.sleep(WATCH if self.db is not None else POLL)

    def cycle(self, sid: str, vid: str) -> tuple[float, float]:
        url = f"{self.compute}/servers/{sid}/os-volume_attachments"
        hdr = {"OpenStack-API-Version": "compute 2.89"}
        t0 = time.time()
        self.http.post(url, json={"volumeAttachment": {"volumeId": vid}},
                       headers=hdr).raise_for_status()
        attach = self.wait(vid, "in-use") - t0
        t1 = time.time()
        self.http.delete(f"{url}/{vid}", headers=hdr).raise_for_status()
        detach = self.wait(vid, "available") - t1
        return attach, detach


def start_serve(state: str, code: str | None = None) -> subprocess.Popen[bytes]:
    """``tether serve`` on ``state``; ``code``: a checkout whose ``tether``
    package it runs instead of this one (to compare revisions in one run)."""
    conf = os.path.join(state, "tether.conf")
    with open(conf, "w") as f:
        f.write("[api]\nauth_strategy = noauth\n"
                f"compute_port = {COMPUTE_PORT}\nvolume_port = {VOLUME_PORT}\n"
                f"image_port = {IMAGE_PORT}\n")
        # no quotas (a revision without them ignores the section)
        f.write("[quota]\nvolumes = -1\ngigabytes = -1\ninstances = -1\ncores = -1\n"
                "ram = -1\n")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "tether"),
                             "--config-file", conf, "--state-dir", state, "serve"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": code} if code else None)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{VOLUME_PORT}/v3", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("tether serve did not come up")
        time.sleep(0.1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--watch", choices=["db", "api"], default="db",
                    help="how to see an operation end (see the module's docstring)")
    ap.add_argument("--serve-from", metavar="DIR",
                    help="run tether serve from this checkout (e.g. a git worktree of "
                         "another revision) to compare it in the same minutes")
    args = ap.parse_args()
    daemons.ensure_libvirtd()
    daemons.ensure_tgtd(0)
    state = tempfile.mkdtemp(prefix="tether-bench-")
    serve = start_serve(state, args.serve_from)
    if os.environ.get("BENCH_PROFILE"):  # sample the service with py-spy while it works
        subprocess.Popen(["py-spy", "record", "-p", str(serve.pid), "-r", "500", "-f", "raw",
                          "-o", os.environ["BENCH_PROFILE"]], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    with open(os.path.join(state, "service_token")) as f:
        api = Api(f.read().strip(), os.path.join(state, "tether.db")
                  if args.watch == "db" else None)
    sid = api.http.post(f"{api.compute}/servers", json={"server": {
        "name": "bench", "flavorRef": "1"}}).json()["server"]["id"]
    vid = api.http.post(f"{api.volume}/volumes", json={"volume": {"size": 1}}).json()[
        "volume"]["id"]
    driver = LibvirtDriver()
    direct_server = str(uuid.uuid4())
    driver.spawn(virt.ServerSpec(direct_server, f"tether-bench-{direct_server}", 1, 64))
    backing = os.path.join(state, "direct-volume")
    with open(backing, "wb") as f:
        f.truncate(1 << 30)
    initiator = host_initiator_iqn(None, state, "bench")
    directs = {"direct": Direct(driver, direct_server, backing, initiator,
                                CommandAdmin(ProcessRunner())),
               "socket": Direct(driver, direct_server, backing, initiator, SocketAdmin())}
    results: dict[str, list[float]] = {f"{path}_{op}": [] for path in (*directs, "tether")
                                       for op in ("attach", "detach")}
    cpu: list[tuple[float, int]] = []
    try:
        api.wait(vid, "available")
        deadline = time.monotonic() + 60
        while api.http.get(f"{api.compute}/servers/{sid}").json()["server"]["status"] != \
                "ACTIVE":
            if time.monotonic() > deadline:
                raise RuntimeError("server not ACTIVE")
            time.sleep(0.05)
        for direct in directs.values():  # warm every path once
            direct.cycle()
        api.cycle(sid, vid)
        for _ in range(args.cycles):
            for name, direct in directs.items():
                a, d = direct.cycle()
                results[f"{name}_attach"].append(a)
                results[f"{name}_detach"].append(d)
            c0, polls0 = cpu_seconds(serve.pid), api.polls
            a, d = api.cycle(sid, vid)
            cpu.append((cpu_seconds(serve.pid) - c0, api.polls - polls0))
            results["tether_attach"].append(a)
            results["tether_detach"].append(d)
        # what one status poll costs the service, to take out of its CPU
        poll_cpu = 0.0
        if args.watch == "api":
            c0 = cpu_seconds(serve.pid)
            for _ in range(300):
                api.status(vid)
            poll_cpu = (cpu_seconds(serve.pid) - c0) / 300
        final = api.volume_(vid)
        if final["status"] != "available" or final["attachments"]:
            raise RuntimeError(f"volume ended {final['status']} with {final['attachments']}")
    finally:
        driver.destroy(direct_server)
        api.http.delete(f"{api.compute}/servers/{sid}")
        time.sleep(1)
        serve.terminate()
        serve.wait(timeout=30)
    table = {k: {"p50_ms": pct(v, 0.5) * 1000, "p95_ms": pct(v, 0.95) * 1000}
             for k, v in results.items()}
    ratio = {op: table[f"tether_{op}"]["p50_ms"] / table[f"direct_{op}"]["p50_ms"]
             for op in ("attach", "detach")}
    strict = {op: table[f"tether_{op}"]["p50_ms"] / table[f"socket_{op}"]["p50_ms"]
              for op in ("attach", "detach")}
    per_op = [(c - n * poll_cpu) / 2 * 1000 for c, n in cpu]  # two operations per cycle
    cpu_ms = statistics.median(per_op)
    print(f"{'path':16} {'p50 ms':>9} {'p95 ms':>9}")
    for k, v in table.items():
        print(f"{k:16} {v['p50_ms']:9.1f} {v['p95_ms']:9.1f}")
    print(f"ratio p50: attach {ratio['attach']:.2f}x (target <= 1.5), "
          f"detach {ratio['detach']:.2f}x (target <= 1.3); against the socket floor: "
          f"attach {strict['attach']:.2f}x, detach {strict['detach']:.2f}x")
    polls = (f"; its cost of the benchmark's {statistics.median(n for _, n in cpu):.0f} "
             f"status polls per cycle, {poll_cpu * 1000:.2f} ms each, excluded"
             if args.watch == "api" else "; the end of each operation read from its database")
    print(f"tether serve CPU per operation: {cpu_ms:.1f} ms (target <= 8{polls}); "
          f"cycles' p25-p75 {pct(per_op, 0.25):.1f}-{pct(per_op, 0.75):.1f} ms")
    out = {"cycles": args.cycles, "watch": args.watch, "table": table, "ratio_p50": ratio,
           "ratio_p50_socket_floor": strict, "cpu_ms_per_op": cpu_ms,
           "cpu_ms_per_op_by_cycle": per_op,
           "poll_cpu_ms": poll_cpu * 1000, "raw_s": results}
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"attach_detach-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
