"""``tether demo``: the embedded mode end to end, narrated, with real Linux guests.

Starts what it needs (tgtd, virtlogd + libvirtd, and ``tether serve`` in this
process unless one already answers), builds and registers the tiny Linux
image (cached after the first time), then over the REST APIs: boots two
servers A and B from it, creates a volume and attaches it to A; shows the
disk in A's domain XML and QEMU's iSCSI session on the target (and that no
other initiator gets in); guest A writes 64 MiB of random data at the start
of the volume; detaches it (showing disk, session, target and secret gone,
the guest seeing its disk go, and the detach's step waterfall); attaches it
to B, which reads the data back.  The last line is the data check:
``data check: wrote <sha256> read <sha256> OK`` (``MISMATCH``, and a
non-zero exit, when the two differ).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import httpx

from tether import config, daemons
from tether.client import ApiClient, ComputeClient
from tether.executor import ProcessRunner
from tether.image import tiny
from tether.image.agent import AgentError, GuestAgent
from tether.image.registry import ImageRegistry
from tether.service import Embedded, service_token
from tether.volume.targets.base import target_iqn
from tether.waterfall import render

OTHER_INITIATOR = "iqn.2010-10.org.tether:demo-intruder"
DATA_MIB = 64
FLAVOR = "t1.small"  # the guest holds the 64 MiB it writes in memory first


def _say(step: str, *details: str) -> None:
    print(f"==> {step}", flush=True)
    for d in details:
        print(f"    {d}", flush=True)


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          check=False).stdout


def guest_disks(server_id: str, inactive: bool = False) -> list[str]:
    """The guest's disks as ``dev <- source`` lines, read with virsh."""
    argv = ["virsh", "-c", "qemu:///system", "dumpxml", f"tether-{server_id}"]
    if inactive:
        argv.append("--inactive")
    xml = _run(argv)
    if not xml:
        return []
    out = []
    for disk in ET.fromstring(xml).iter("disk"):  # noqa: S314 - our own libvirtd's XML
        src, tgt = disk.find("source"), disk.find("target")
        alias = disk.find("alias")
        name = src.get("name") if src is not None else "?"
        out.append(f"{tgt.get('dev') if tgt is not None else '?'} <- iscsi {name} "
                   f"(alias {alias.get('name') if alias is not None else '-'})")
    return out


def target_sessions(conf: Any, volume_id: str) -> list[str]:
    """Initiators with a session on the volume's target, read with tgtadm."""
    show = _run(["tgtadm", "-C", str(conf.volume.tgt_control_port), "--lld", "iscsi",
                 "--op", "show", "--mode", "target"])
    iqn, lines, inside = target_iqn(volume_id), [], False
    for line in show.splitlines():
        if line.startswith("Target "):
            inside = line.split(": ", 1)[-1].strip() == iqn
        elif inside and "Initiator:" in line:
            lines.append(line.split("Initiator:", 1)[1].split()[0])
    return lines


def _inq(initiator: str, info: dict[str, Any]) -> bool:
    url = (f"iscsi://{info['auth_username']}%{info['auth_password']}@"
           f"{info['target_portal']}/{info['target_iqn']}/{info['target_lun']}")
    return subprocess.run(["iscsi-inq", "-i", initiator, url], capture_output=True,
                          timeout=30, check=False).returncode == 0


def _api_up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def run(conf: Any, args: argparse.Namespace) -> int:
    if daemons.ensure_tgtd(conf.volume.tgt_control_port):
        _say("started tgtd")
    if daemons.ensure_libvirtd():
        _say("started virtlogd and libvirtd")
    embedded = None
    if not _api_up(config.volume_endpoint(conf)):
        _say("starting tether serve (embedded mode)", f"state dir {conf.state_dir}")
        embedded = Embedded(conf)
        embedded.start()
    if conf.api.auth_strategy == "local":
        from tether.identity.local import admin_token

        token = admin_token(conf)  # the bootstrap admin, from the database and the key
    else:
        token = service_token(conf)
    try:
        image_id = _tiny_image(conf, embedded)
        with ApiClient(config.volume_endpoint(conf), token) as cinder, \
                ComputeClient.from_conf(conf, token) as nova:
            return _walk(conf, cinder, nova, image_id, args)
    finally:
        if embedded is not None:
            embedded.stop()


def _tiny_image(conf: Any, embedded: Embedded | None) -> str:
    """Build (or find in the cache) and register the tiny Linux image."""
    from tether.service import open_database

    started = time.perf_counter()
    built = tiny.TinyBuilder(config.image_cache_dir(conf), ProcessRunner()).build()
    db = embedded.db if embedded is not None else open_database(conf, upgrade=False)
    try:
        image, new = tiny.register(ImageRegistry(db, config.images_dir(conf)), built)
    finally:
        if embedded is None:
            db.dispose()
    _say(f"tiny image {image.name} {image.id}: {'registered' if new else 'already there'} "
         f"({time.perf_counter() - started:.1f} s)", f"built from {', '.join(built.packages)}")
    return image.id


def _agent(conf: Any, server_id: str) -> GuestAgent:
    return GuestAgent(os.path.join(config.instances_dir(conf), server_id, "agent.sock"))


def _attach(nova: ComputeClient, cinder: ApiClient, sid: str, vid: str) -> dict[str, Any]:
    att = nova.attach(sid, vid)
    vol = cinder.wait_volume(vid, {"in-use", "available", "error"}, timeout=120)
    return {"device": att["device"], "status": vol["status"]}


def _walk(conf: Any, cinder: ApiClient, nova: ComputeClient, image_id: str,
          args: argparse.Namespace) -> int:
    tag = uuid.uuid4().hex[:6]
    t0 = time.perf_counter()
    sids = [nova.create_server(f"demo-{tag}-{x}", FLAVOR, image_id)["id"] for x in "ab"]
    vid = cinder.create_volume(1, f"demo-{tag}")["id"]
    agents = [_agent(conf, sid) for sid in sids]
    ok, wrote, read = True, "-", "-"
    try:
        for sid, agent in zip(sids, agents, strict=True):
            srv = nova.wait_server(sid, {"ACTIVE", "ERROR"}, timeout=120)
            ok &= srv["status"] == "ACTIVE"
            agent.wait_ready(timeout=120)
            _say(f"server {srv['name']} {sid}: {srv['status']}, Linux up "
                 f"({time.perf_counter() - t0:.1f} s after create)")
        vol = cinder.wait_volume(vid, {"available", "error"})
        _say(f"volume {vol['name']} {vid}: {vol['status']}")
        a, b = sids
        wrote, read, good = _data_walk(conf, cinder, nova, a, b, vid, agents)
        ok &= good
    finally:
        for agent in agents:
            agent.close()
        if not args.keep:
            for sid in sids:
                nova.delete_server(sid)
            for sid in sids:
                nova.wait_server_gone(sid)
            cinder.wait_volume(vid, {"available", "error", "in-use"})
            cinder.delete_volume(vid)
            cinder.wait_volume_gone(vid)
            _say("servers and volume deleted")
    same = wrote == read and wrote != "-"
    print(f"demo: {'OK' if ok else 'FAILED'}")
    print(f"data check: wrote {wrote} read {read} {'OK' if same else 'MISMATCH'}", flush=True)
    return 0 if ok and same else 1


def _data_walk(conf: Any, cinder: ApiClient, nova: ComputeClient, a: str, b: str, vid: str,
               agents: list[GuestAgent]) -> tuple[str, str, bool]:
    """Attach to A, write, detach (and check everything is gone), attach to B,
    read; (sha256 written, sha256 read, every check passed)."""
    agent_a, agent_b = agents
    t1 = time.perf_counter()
    att = _attach(nova, cinder, a, vid)
    disk = agent_a.wait_disk(vid)
    _say(f"attach to A: volume {att['status']} as {att['device']}, the guest sees /dev/{disk} "
         f"({(time.perf_counter() - t1) * 1000:.0f} ms)")
    ok = att["status"] == "in-use"
    live, persistent = guest_disks(a), guest_disks(a, inactive=True)
    _say("guest A's disks (live domain XML):", *(live or ["(none)"]))
    _say("guest A's disks (persistent definition):", *(persistent or ["(none)"]))
    sessions = target_sessions(conf, vid)
    _say(f"iSCSI sessions on {target_iqn(vid)}:", *(sessions or ["(none)"]))
    ok &= bool(live) and bool(persistent) and bool(sessions)
    atts = cinder._volume("GET", f"/attachments?volume_id={vid}")["attachments"]
    info = cinder._volume("GET", f"/attachments/{atts[0]['id']}")["attachment"][
        "connection_info"]
    intruder = _inq(OTHER_INITIATOR, info)
    _say(f"another initiator with the right CHAP secret: "
         f"{'ADMITTED (wrong!)' if intruder else 'refused'}")
    ok &= not intruder

    t2 = time.perf_counter()
    wrote = agent_a.write_random(vid, DATA_MIB)
    _say(f"guest A wrote {DATA_MIB} MiB of random data to /dev/{disk} (O_DIRECT) in "
         f"{time.perf_counter() - t2:.1f} s", f"sha256 {wrote}")

    request_id = nova.detach(a, vid)
    act = nova.wait_action(a, request_id)
    vol = cinder.get_volume(vid)
    _say(f"detach from A: {act.get('message') or 'Success'}: volume {vol['status']}")
    ok &= vol["status"] == "available" and not act.get("message")
    try:
        agent_a.wait_disk_gone(vid)
        in_guest: list[str] = []
    except AgentError:
        in_guest = [vid]
    gone = {
        "disk in guest A": in_guest,
        "disk in live XML": guest_disks(a),
        "disk in persistent XML": guest_disks(a, inactive=True),
        "iSCSI session": target_sessions(conf, vid),
        "target": [t for t in [_run(["tgtadm", "-C", str(conf.volume.tgt_control_port),
                                     "--lld", "iscsi", "--op", "show", "--mode",
                                     "target"])] if target_iqn(vid) in t],
        "libvirt secret": [s for s in _run(["virsh", "-c", "qemu:///system",
                                            "secret-list"]).splitlines() if vid in s],
    }
    for what, left in gone.items():
        print(f"    {what:24} {'gone' if not left else 'STILL THERE'}")
        ok &= not left
    print()
    print("\n".join(render(act)))
    print()

    att = _attach(nova, cinder, b, vid)
    disk = agent_b.wait_disk(vid)
    _say(f"attach to B: volume {att['status']} as {att['device']}, the guest sees /dev/{disk}")
    ok &= att["status"] == "in-use"
    t3 = time.perf_counter()
    read = agent_b.read_sha256(vid, DATA_MIB)
    _say(f"guest B read the volume's first {DATA_MIB} MiB (O_DIRECT) in "
         f"{time.perf_counter() - t3:.1f} s", f"sha256 {read}")
    return wrote, read, ok
