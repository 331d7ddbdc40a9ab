"""``tether demo``: the embedded mode end to end, narrated.

Starts what it needs (tgtd, virtlogd + libvirtd, and ``tether serve`` in this
process unless one already answers), then over the REST APIs: creates a
server and a volume, attaches the volume, shows the disk in the guest's
domain XML and QEMU's iSCSI session on the target (and that no other
initiator gets in), detaches it, shows all of it gone, and prints the
detach's step waterfall.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import httpx

from tether import config, daemons
from tether.client import ApiClient, ComputeClient
from tether.service import Embedded, service_token
from tether.volume.targets.base import target_iqn
from tether.waterfall import render

OTHER_INITIATOR = "iqn.2010-10.org.tether:demo-intruder"


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
    token = service_token(conf)
    try:
        with ApiClient(config.volume_endpoint(conf), token) as cinder, \
                ComputeClient.from_conf(conf, token) as nova:
            return _walk(conf, cinder, nova, args)
    finally:
        if embedded is not None:
            embedded.stop()


def _walk(conf: Any, cinder: ApiClient, nova: ComputeClient, args: argparse.Namespace) -> int:
    tag = uuid.uuid4().hex[:6]
    t0 = time.perf_counter()
    srv = nova.wait_server(nova.create_server(f"demo-{tag}")["id"], {"ACTIVE", "ERROR"})
    vol = cinder.wait_volume(cinder.create_volume(1, f"demo-{tag}")["id"],
                             {"available", "error"})
    _say(f"server {srv['name']} {srv['id']}: {srv['status']}",
         f"volume {vol['name']} {vol['id']}: {vol['status']} "
         f"({(time.perf_counter() - t0) * 1000:.0f} ms for both)")
    sid, vid = srv["id"], vol["id"]
    ok = True
    try:
        t1 = time.perf_counter()
        att = nova.attach(sid, vid)
        vol = cinder.wait_volume(vid, {"in-use", "available", "error"}, timeout=120)
        _say(f"attach: volume {vol['status']} as {att['device']} "
             f"({(time.perf_counter() - t1) * 1000:.0f} ms)")
        ok &= vol["status"] == "in-use"
        live, persistent = guest_disks(sid), guest_disks(sid, inactive=True)
        _say("guest disks (live domain XML):", *(live or ["(none)"]))
        _say("guest disks (persistent definition):", *(persistent or ["(none)"]))
        sessions = target_sessions(conf, vid)
        _say(f"iSCSI sessions on {target_iqn(vid)}:", *(sessions or ["(none)"]))
        ok &= bool(live) and bool(persistent) and bool(sessions)
        atts = [a for a in cinder._volume("GET", f"/attachments?volume_id={vid}")[
            "attachments"]]
        info = cinder._volume("GET", f"/attachments/{atts[0]['id']}")["attachment"][
            "connection_info"]
        intruder = _inq(OTHER_INITIATOR, info)
        _say(f"another initiator with the right CHAP secret: "
             f"{'ADMITTED (wrong!)' if intruder else 'refused'}")
        ok &= not intruder

        request_id = nova.detach(sid, vid)
        act = nova.wait_action(sid, request_id)
        vol = cinder.get_volume(vid)
        _say(f"detach: {act.get('message') or 'Success'}: volume {vol['status']}")
        ok &= vol["status"] == "available" and not act.get("message")
        gone = {
            "disk in live XML": guest_disks(sid),
            "disk in persistent XML": guest_disks(sid, inactive=True),
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
    finally:
        if not args.keep:
            nova.delete_server(sid)
            nova.wait_server_gone(sid)
            cinder.wait_volume(vid, {"available", "error", "in-use"})
            cinder.delete_volume(vid)
            cinder.wait_volume_gone(vid)
            _say("server and volume deleted")
    print(f"demo: {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1
