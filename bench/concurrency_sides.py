"""The two sides that bench/concurrency.py compares, each able to put N
attaches or N detaches in flight at once:

* :class:`Tether`: a ``tether serve`` process on free ports, driven through
  its Compute and Block Storage APIs; the end of an operation is read from
  its SQLite file (read-only);
* :class:`Floor`: the same physical work as bare calls from this process:
  requests on tgtd's management socket and libvirt calls.

And what both need of the host: a wave's threads released together, the
guests' firmware settled, serve's own ports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import libvirt
from attach_detach import cpu_seconds

from tether.connectors.initiator import host_initiator_iqn
from tether.virt import driver as virt
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.manager import new_chap
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
    def used() -> float:
        total = 0.0
        for pid in pids:
            with contextlib.suppress(OSError):  # a guest gone: the waves will say so
                total += cpu_seconds(pid)
        return total

    started = time.monotonic()
    while time.monotonic() - started < timeout:
        c0 = used()
        time.sleep(2)
        if (used() - c0) / 2 < 0.02 * len(pids):
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

    def __init__(self, state: str, code: str, api_threads: int, prefix: str) -> None:
        self.state, self.code = state, code
        self.proc: subprocess.Popen[bytes] | None = None
        self.created: tuple[list[str], list[str]] = ([], [])  # server ids, volume ids
        ports = self.ports = [free_port() for _ in range(3)]
        self.conf = ("[api]\nauth_strategy = noauth\n"
                     f"compute_port = {ports[0]}\nvolume_port = {ports[1]}\n"
                     f"image_port = {ports[2]}\nthreads = {api_threads}\n"
                     "[compute]\ndevice_detach_timeout = 20\ndevice_detach_attempts = 3\n"
                     f"domain_prefix = {prefix}\n"
                     # no quotas (a revision without them ignores the section)
                     "[quota]\nvolumes = -1\ngigabytes = -1\ninstances = -1\ncores = -1\n"
                     "ram = -1\n")
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

    def check_detached(self, sids: list[str], vids: list[str]) -> list[str]:
        """What is wrong at the end (nothing, we hope): a volume not
        ``available`` or with an attachment, a server with a volume attachment."""
        wrong = []
        for vid in vids:
            vol = self.volume_(vid)
            if vol["status"] != "available" or vol["attachments"]:
                wrong.append(f"volume {vid} ended {vol['status']} with attachments "
                             f"{vol['attachments']}")
        for sid in sids:
            left = self.http.get(f"{self.compute}/servers/{sid}/os-volume_attachments",
                                 headers=COMPUTE).raise_for_status().json()["volumeAttachments"]
            if left:
                wrong.append(f"server {sid} still lists volume attachments {left}")
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
             timeout: float) -> tuple[list[Op], float, dict[str, list[float]]]:
        """N requests at once; the operations, the service's CPU over the wave,
        and the operations' steps."""
        after = self.db.execute("SELECT coalesce(max(id), 0) FROM instance_actions"
                                ).fetchone()[0]
        c0 = self.cpu()
        call = self.attach if kind == "attach" else self.detach
        ops = at_once(pool, [lambda s=s, v=v: call(s, v) for s, v in pairs])
        self.settle(ops, "in-use" if kind == "attach" else "available", f"{kind}_volume",
                    after, timeout)
        cpu = self.cpu() - c0
        return ops, cpu, self.steps(after, f"{kind}_volume")

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

    def steps(self, after: int, action: str) -> dict[str, list[float]]:
        """Where the wave's operations spent their time (seconds, by step; steps
        nest): each recorded step, and ``queued``: from the end of the API's
        step to the start of the host's first (the RPC, a worker, the server's
        lock: the host runs one operation per server at a time)."""
        rows = self.db.execute(
            "SELECT e.action_id, e.event, e.start_time, e.finish_time FROM "
            "instance_action_events e JOIN instance_actions a ON a.id = e.action_id "
            "WHERE a.id > ? AND a.action = ? AND e.finish_time IS NOT NULL ORDER BY e.id",
            (after, action)).fetchall()
        out: dict[str, list[float]] = {}
        api_end: dict[int, float] = {}
        first_host: dict[int, float] = {}
        for aid, event, start, finish in rows:
            out.setdefault(event, []).append(epoch(finish) - epoch(start))
            if event.endswith(":compute_api"):
                api_end[aid] = epoch(finish)
            else:
                first_host.setdefault(aid, epoch(start))
        out["queued"] = [first_host[a] - api_end[a] for a in api_end if a in first_host]
        return out

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
            self.driver.spawn(virt.ServerSpec(guest, f"{self.driver.domain_prefix}{guest}",
                                              1, 64))
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
