#!/usr/bin/env python3
"""A bounded soak: hundreds of random operations on ``tether serve`` over the
real daemons (its own tgtd, the host's libvirtd + QEMU), some of them killed
at a random fault point (``TETHER_KILL_AT``, see tether/faults.py) or with
tgtd killed under them; after each fault ``tether serve`` starts again on the
same state and recovers.

After every cycle: every operation finished, no server with a task, no volume
in a transitional status (a shelved-offloaded server's volume stays
``reserved``); after every fault and every ``--audit-every`` cycles,
``tether audit`` clean; the data written into a volume before a fault reads
back intact.  Prints a summary and writes JSON under bench/results/.

Usage: .venv/bin/python tools/soak.py [--cycles 300] [--fault-rate 0.25] [--seed N]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.harness import wait_for
from tests.integration import serve as serving
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve
from tether import daemons
from tether.virt.libvirt.driver import LibvirtDriver

TOKEN = "soak:soak"
# the steps of each operation (a fault point is a step and :start or :end)
STEPS = {
    "attach": ["a1:compute_api", "a1.1:attachment_update", "a2:host_connect",
               "a1.1.1:guest_device_add", "a1.3:attachment_complete"],
    "detach": ["s1:compute_api", "s1.1:driver_detach", "s1.1.1:guest_device_removal",
               "s2:host_disconnect", "s1.2+s1.3:attachment_delete"],
    "delete": ["destroy_guest", "detach_volume:*"],
    "stop": ["stop"], "start": ["start"],
    "shelve": ["power_off", "destroy_guest", "release_volume:*"],
    "unshelve": ["spawn", "reattach_volume:*"],
}
STABLE_VOLUME = {"available", "in-use"}


class Soak:
    def __init__(self, serve: Serve, rng: random.Random, servers: int, volumes: int) -> None:
        self.serve, self.rng = serve, rng
        self.n_servers, self.n_volumes = servers, volumes
        self.http = httpx.Client(timeout=60, headers={
            "X-Auth-Token": TOKEN, "OpenStack-API-Version": "compute 2.89, volume 3.71"})
        self.stats: collections.Counter[str] = collections.Counter()
        self.problems: list[str] = []
        self.vids: list[str] = []

    # -- the world, read back from the API ---------------------------------------

    def servers(self) -> list[dict[str, Any]]:
        return list(self.http.get(f"{self.serve.compute_url}/servers/detail").json()["servers"])

    def volumes(self) -> list[dict[str, Any]]:
        return list(self.http.get(f"{self.serve.volume_url}/volumes/detail").json()["volumes"])

    def create_server(self) -> str:
        return self.serve.create_server(TOKEN, f"soak-{self.rng.randrange(1 << 20)}")

    def setup(self) -> None:
        for _ in range(self.n_servers):
            self.create_server()
        for _ in range(self.n_volumes):
            vid = self.http.post(f"{self.serve.volume_url}/volumes",
                                 json={"volume": {"size": 1}}).json()["volume"]["id"]
            self.vids.append(vid)
            self.serve.wait_volume(TOKEN, vid, "available")

    # -- one cycle ---------------------------------------------------------------

    def choose(self) -> tuple[str, dict[str, Any], str | None] | None:
        """An operation the world allows now: (op, server, volume)."""
        servers = {s["id"]: s for s in self.servers()}
        vols = self.volumes()
        options: list[tuple[str, dict[str, Any], str | None]] = []
        for vol in vols:
            if vol["status"] == "available":
                options += [("attach", s, vol["id"]) for s in servers.values()
                            if s["status"] in ("ACTIVE", "SHUTOFF")
                            and len(s["os-extended-volumes:volumes_attached"]) < 4]
            for att in vol["attachments"]:
                if att["server_id"] in servers:
                    options.append(("detach", servers[att["server_id"]], vol["id"]))
        for s in servers.values():
            status = s["status"]
            if status == "ACTIVE":
                options += [("stop", s, None), ("shelve", s, None)]
            elif status == "SHUTOFF":
                options += [("start", s, None), ("shelve", s, None)]
            elif status == "SHELVED_OFFLOADED":
                options.append(("unshelve", s, None))
            options.append(("delete", s, None))
        weights = {"attach": 6, "detach": 6, "stop": 1, "start": 1, "shelve": 1,
                   "unshelve": 2, "delete": 1}
        if not options:
            return None
        return self.rng.choices(options, [weights[o[0]] for o in options])[0]

    def request(self, op: str, server: dict[str, Any], vid: str | None) -> int:
        url, sid = self.serve.compute_url, server["id"]
        try:
            if op == "attach":
                res = self.http.post(f"{url}/servers/{sid}/os-volume_attachments",
                                     json={"volumeAttachment": {"volumeId": vid}})
            elif op == "detach":
                res = self.http.delete(f"{url}/servers/{sid}/os-volume_attachments/{vid}")
            elif op == "delete":
                res = self.http.delete(f"{url}/servers/{sid}")
            else:
                action = {"stop": "os-stop", "start": "os-start"}.get(op, op)
                res = self.http.post(f"{url}/servers/{sid}/action", json={action: None})
        except httpx.TransportError:
            return 0  # the process died under the request
        return res.status_code

    def settled(self) -> bool:
        for s in self.servers():
            actions = self.http.get(f"{self.serve.compute_url}/servers/{s['id']}/"
                                    "os-instance-actions").json()["instanceActions"]
            if any(not a["finish_time"] for a in actions) or s["OS-EXT-STS:task_state"]:
                return False
        return True

    def check(self, where: str) -> None:
        wait_for(self.settled, 120, f"every operation finished ({where})")
        offloaded = {s["id"] for s in self.servers() if s["status"] == "SHELVED_OFFLOADED"}
        for vol in self.volumes():
            if vol["status"] in STABLE_VOLUME:
                continue
            if vol["status"] == "reserved" and self._reserved_for(vol["id"]) <= offloaded:
                continue
            self.problems.append(f"{where}: volume {vol['id']} left {vol['status']}")

    def _reserved_for(self, vid: str) -> set[str]:
        atts = httpx.get(f"{self.serve.volume_url}/attachments?all_tenants=1&volume_id={vid}",
                         headers={"X-Auth-Token": "admin:admin",
                                  "OpenStack-API-Version": "volume 3.71"}).json()[
            "attachments"]
        return {a["instance"] for a in atts}

    def audit(self, where: str, within: float = 15.0) -> None:
        """``tether audit`` clean, at once or within ``within`` seconds (the
        volume service's reconcile heals a tgtd restart every second here)."""
        self.stats["audits"] += 1
        deadline = time.monotonic() + within
        while True:
            res = serving.cli(self.serve, "audit")
            if res.returncode == 0:
                return
            if time.monotonic() > deadline:
                self.problems.append(f"{where}: audit exit {res.returncode}: "
                                     f"{res.stdout.strip()} {res.stderr.strip()}")
                return
            self.stats["audits repeated"] += 1
            time.sleep(0.5)

    def cycle(self, n: int, fault_rate: float, tgtd: Tgtd) -> None:
        chosen = self.choose()
        if chosen is None:
            return
        op, server, vid = chosen
        fault = self.rng.random() < fault_rate
        where = f"cycle {n} {op} {server['id'][:8]}{' ' + vid[:8] if vid else ''}"
        if not fault:
            self.stats[f"op:{op}"] += 1
            self.stats[f"answer:{self.request(op, server, vid)}"] += 1
            self.check(where)
            self.keep_size()
            return
        kind = self.rng.choice(["kill"] * 4 + ["tgtd"])
        written = vid or self.rng.choice(self.vids)
        data = serving.write_pattern(self.serve, written, 1 << 16, 4096)
        if kind == "tgtd":
            self.stats["fault:tgtd"] += 1
            tgtd.stop()
            self.stats[f"answer:{self.request(op, server, vid)}"] += 1
            tgtd.start()
        else:
            point = f"{self.rng.choice(STEPS[op])}:{self.rng.choice(['start', 'end'])}"
            self.stats[f"fault:{point}"] += 1
            serving.stop(self.serve)
            serving.start(self.serve, env={"TETHER_KILL_AT": point})
            self.stats[f"answer:{self.request(op, server, vid)}"] += 1
            proc = self.serve.proc
            assert proc is not None
            try:
                wait_for(lambda: proc.poll() is not None, 30, f"death at {point}")
                self.stats["killed"] += proc.returncode == -signal.SIGKILL
            except AssertionError:
                self.stats["point not reached"] += 1  # the operation did not pass there
                serving.stop(self.serve)
            self.serve.proc = None
            serving.start(self.serve)
        self.stats[f"op:{op}"] += 1
        self.check(where + f" after {kind}")
        self.audit(where)
        if serving.read_pattern(self.serve, written, 1 << 16, 4096) != data:
            self.problems.append(f"{where}: data changed")
        self.keep_size()

    def keep_size(self) -> None:
        """A server a cycle deleted is replaced, so the world keeps its size."""
        for _ in range(self.n_servers - len(self.servers())):
            self.create_server()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=300)
    parser.add_argument("--fault-rate", type=float, default=0.25)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--audit-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    daemons.ensure_libvirtd()
    tgtd = Tgtd().start()
    state = tempfile.mkdtemp(prefix="tether-soak-", dir="/var/tmp")
    serve = serving.write_config(state, tgtd, "sweep_interval = 2\noperation_timeout = 5\n"
                                             "[volume]\nreconcile_interval = 1\n")
    serving.start(serve)
    soak = Soak(serve, rng, args.servers, args.volumes)
    started = time.monotonic()
    try:
        soak.setup()
        for n in range(1, args.cycles + 1):
            try:
                soak.cycle(n, args.fault_rate, tgtd)
            except Exception:
                soak.problems.append(f"cycle {n}: {traceback.format_exc(limit=3)}")
                if serve.proc is None or serve.proc.poll() is not None:
                    serving.start(serve)
            if n % args.audit_every == 0:
                soak.check(f"cycle {n}")
                soak.audit(f"cycle {n}")
                print(f"{n}/{args.cycles} cycles, {len(soak.problems)} problem(s), "
                      f"{time.monotonic() - started:.0f} s", flush=True)
    finally:
        took = time.monotonic() - started
        servers = [s["id"] for s in soak.servers()] if serve.proc else []
        try:
            serve.servers = servers
            serve.delete_servers("admin:admin")
            serve.delete_volumes("admin:admin")
        finally:
            serving.stop(serve)
            for sid in servers:
                LibvirtDriver().destroy(sid)
            tgtd.stop()
    if not soak.problems:
        shutil.rmtree(state, ignore_errors=True)  # kept to look at when something went wrong
    summary = {"seed": args.seed, "cycles": args.cycles, "fault_rate": args.fault_rate,
               "seconds": round(took, 1), "stats": dict(sorted(soak.stats.items())),
               "problems": soak.problems, "state_dir": state if soak.problems else None}
    print(json.dumps(summary, indent=2))
    os.makedirs("bench/results", exist_ok=True)
    out = f"bench/results/soak-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.json"
    with open(out, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"written {out}")
    return 1 if soak.problems else 0


if __name__ == "__main__":
    sys.exit(main())
