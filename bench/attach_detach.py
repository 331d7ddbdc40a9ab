#!/usr/bin/env python3
"""Attach/detach through Tether's API against the same work done directly.

One run measures both, interleaved cycle by cycle so machine noise hits them
alike:

* direct: what the job physically needs — tgtadm export (target, LUN, CHAP
  account, initiator bind), libvirt secret, live+persistent attach of the
  iSCSI network disk; then live+persistent detach waited on the
  device-removed event, secret removal, tgtadm unexport;
* tether: POST os-volume_attachments → volume ``in-use``; DELETE
  os-volume_attachments → volume ``available`` (polled through the API,
  as a client would).

Prints p50/p95 of each, the ratios, and the CPU time the Tether process
spent per operation (this process runs ``tether serve`` embedded; the
direct work's own CPU is measured and subtracted from nothing: it runs in
the same process, so the table gives Tether's CPU as total CPU of the
tether cycle minus nothing else running).  Writes JSON to bench/results/.

Usage: .venv/bin/python bench/attach_detach.py [--cycles N] [--state-dir D]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

import httpx

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.targets.tgt import TgtTarget

from tether import config, daemons
from tether.executor import ProcessRunner
from tether.service import Embedded, service_token
from tether.virt import driver as virt
from tether.volume.manager import new_chap
from tether.volume.targets.base import ExportSpec


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Direct:
    """The physical floor: the same tgtadm and libvirt work, no control plane."""

    def __init__(self, target: TgtTarget, driver: LibvirtDriver, server_uuid: str,
                 volume_path: str, initiator: str) -> None:
        self.target, self.driver = target, driver
        self.server_uuid, self.path, self.initiator = server_uuid, volume_path, initiator

    def cycle(self) -> tuple[float, float]:
        vid = str(uuid.uuid4())
        chap = new_chap()
        t0 = time.perf_counter()
        loc = self.target.export(ExportSpec(vid, self.path, chap, frozenset({self.initiator})))
        secret = self.driver.define_chap_secret(vid, chap.username, chap.password)
        host, _, port = loc.target_portal.rpartition(":")
        self.driver.attach_disk(self.server_uuid, virt.DiskSpec(
            vid, "sdb", "scsi", virt.NetworkDiskSource(loc.target_iqn, loc.target_lun, host,
                                                       int(port), self.initiator,
                                                       chap.username, secret)))
        attach = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.driver.detach_disk(self.server_uuid, vid, timeout=20, attempts=3)
        self.driver.undefine_chap_secret(vid)
        self.target.unexport(vid)
        return attach, time.perf_counter() - t1


class ThroughTether:
    def __init__(self, base: str, token: str, server_id: str, volume_id: str) -> None:
        self.http = httpx.Client(timeout=60, headers={"X-Auth-Token": token})
        self.compute = f"{base}:{8774}/v2.1"
        self.server_id, self.volume_id = server_id, volume_id

    def _status(self, vid: str) -> str:
        r = self.http.get(f"{self.volume_base}/volumes/{vid}",
                          headers={"OpenStack-API-Version": "volume 3.71"})
        return str(r.json()["volume"]["status"])

    def _wait(self, status: str) -> None:
        deadline = time.monotonic() + 60
        while self._status(self.volume_id) != status:
            if time.monotonic() > deadline:
                raise RuntimeError(f"volume never became {status}")
            time.sleep(0.001)

    def cycle(self) -> tuple[float, float]:
        url = f"{self.compute}/servers/{self.server_id}/os-volume_attachments"
        t0 = time.perf_counter()
        r = self.http.post(url, json={"volumeAttachment": {"volumeId": self.volume_id}},
                           headers={"OpenStack-API-Version": "compute 2.89"})
        r.raise_for_status()
        self._wait("in-use")
        attach = time.perf_counter() - t0
        t1 = time.perf_counter()
        r = self.http.delete(f"{url}/{self.volume_id}",
                             headers={"OpenStack-API-Version": "compute 2.89"})
        r.raise_for_status()
        self._wait("available")
        return attach, time.perf_counter() - t1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--state-dir", default=None)
    args = ap.parse_args()
    daemons.ensure_libvirtd()
    daemons.ensure_tgtd(0)
    state = args.state_dir or tempfile.mkdtemp(prefix="tether-bench-")
    conf = config.load(state_dir=state, overrides={
        "api": {"compute_port": 18774, "volume_port": 18776}})
    app = Embedded(conf)
    app.start()
    token = service_token(conf)
    base = "http://127.0.0.1"
    h = httpx.Client(timeout=60, headers={"X-Auth-Token": token})
    srv = h.post(f"{base}:18774/v2.1/servers", json={"server": {"name": "bench",
                                                               "flavorRef": "1"}}).json()
    sid = srv["server"]["id"]
    vol = h.post(f"{base}:18776/v3/volumes", json={"volume": {"size": 1}}).json()["volume"]
    # the direct path uses its own domain and volume file on the same daemons
    direct_driver = LibvirtDriver()
    direct_uuid = str(uuid.uuid4())
    direct_driver.spawn(virt.ServerSpec(direct_uuid, f"tether-bench-{direct_uuid}", 1, 64))
    backing = os.path.join(state, "direct-volume")
    with open(backing, "wb") as f:
        f.truncate(1 << 30)
    initiator = app.compute.connector.properties().initiator
    direct = Direct(TgtTarget(ProcessRunner(), "127.0.0.1", 3260, 0), direct_driver,
                    direct_uuid, backing, initiator)
    tether = ThroughTether(base, token, sid, vol["id"])
    tether.compute = f"{base}:18774/v2.1"
    tether.volume_base = f"{base}:18776/v3"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while tether._status(vol["id"]) != "available" or h.get(
            f"{base}:18774/v2.1/servers/{sid}").json()["server"]["status"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise RuntimeError("server/volume not ready")
        time.sleep(0.05)
    results: dict[str, list[float]] = {k: [] for k in (
        "direct_attach", "direct_detach", "tether_attach", "tether_detach")}
    cpu: list[float] = []
    try:
        direct.cycle()  # warm both paths once
        tether.cycle()
        for _ in range(args.cycles):
            a, d = direct.cycle()
            results["direct_attach"].append(a)
            results["direct_detach"].append(d)
            c0 = time.process_time()
            a, d = tether.cycle()
            cpu.append(time.process_time() - c0)
            results["tether_attach"].append(a)
            results["tether_detach"].append(d)
    finally:
        direct_driver.destroy(direct_uuid)
        h.delete(f"{base}:18774/v2.1/servers/{sid}")
        app.stop()
    table = {k: {"p50_ms": pct(v, 0.5) * 1000, "p95_ms": pct(v, 0.95) * 1000}
             for k, v in results.items()}
    ratio = {op: table[f"tether_{op}"]["p50_ms"] / table[f"direct_{op}"]["p50_ms"]
             for op in ("attach", "detach")}
    cpu_per_op_ms = statistics.median(cpu) / 2 * 1000
    print(f"{'path':16} {'p50 ms':>9} {'p95 ms':>9}")
    for k, v in table.items():
        print(f"{k:16} {v['p50_ms']:9.1f} {v['p95_ms']:9.1f}")
    print(f"ratio p50 attach {ratio['attach']:.2f}x (target <= 1.5), "
          f"detach {ratio['detach']:.2f}x (target <= 1.3)")
    print(f"process CPU per tether operation (incl. the benchmark's HTTP client): "
          f"{cpu_per_op_ms:.1f} ms (target <= 8)")
    out = {"cycles": args.cycles, "table": table, "ratio_p50": ratio,
           "cpu_ms_per_op": cpu_per_op_ms, "raw_s": results}
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results",
                        f"attach_detach-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
