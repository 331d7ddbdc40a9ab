"""A Linux host's iSCSI initiator as os-brick sees it, without the kernel's
iscsi_tcp: ``execute`` answers the commands os-brick runs (iscsiadm,
multipath, tee into sysfs ...) the way open-iscsi 2.1 and multipath-tools
0.9 answer them, and keeps ``root`` — a small /sys and /dev tree — in step,
as the kernel and udev would (a scan makes the LUN's disk appear, writing to
its ``delete`` file makes it vanish).  :func:`install` points os-brick's
file reads at that tree.  Every command is recorded, in order, in
``commands``; that list is what the tests check.
"""

from __future__ import annotations

import contextlib
import glob as globlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from os_brick import privileged
from os_brick.initiator import linuxscsi
from os_brick.initiator.connectors import iscsi as brick_iscsi
from oslo_concurrency.processutils import ProcessExecutionError
from oslo_config import cfg

from tether.connectors.iscsi import setup_os_brick

INITIATOR = "iqn.1993-08.org.debian:01:0123456789ab"


@dataclass
class Target:
    """What the storage side exports on one portal: LUN numbers of one IQN."""

    iqn: str
    portal: str  # "127.0.0.1:3260"
    tid: int
    luns: set[int]


@dataclass
class Session:
    sid: int
    target: Target
    disks: dict[int, str] = field(default_factory=dict)  # LUN → sdX

    @property
    def scsi_host(self) -> int:
        return self.sid + 1


class FakeIscsiHost:
    def __init__(self, root: Path, targets: list[Target], multipathd: bool = False) -> None:
        self.root = root
        self.targets = {t.iqn: t for t in targets}
        self.multipathd = multipathd
        self.commands: list[str] = []
        self.nodes: dict[tuple[str, str], dict[str, str]] = {}  # (portal, iqn) → settings
        self.sessions: dict[tuple[str, str], Session] = {}
        self.maps: dict[str, str] = {}  # dm-N → the wwid it maps
        self._next_sid = 1
        self._next_disk = ord("b")
        for d in ("sys/block", "sys/class/iscsi_host", "sys/class/scsi_host",
                  "dev/disk/by-path", "dev/disk/by-id", "dev/mapper"):
            (root / d).mkdir(parents=True, exist_ok=True)

    # --- the executor os-brick is given ---------------------------------------

    def execute(self, *cmd: Any, **kwargs: Any) -> tuple[str, str]:
        argv = [str(c) for c in cmd]
        stdin = kwargs.get("process_input")
        self.commands.append(" ".join(argv) + (f" <<< {stdin}" if stdin is not None else ""))
        code, out, err = self._answer(argv, stdin)
        allowed = kwargs.get("check_exit_code", 0)
        if allowed is True:
            allowed = 0
        if allowed is not False:
            ok = allowed if isinstance(allowed, (list, tuple)) else [allowed]
            if code not in ok:
                raise ProcessExecutionError(out, err, code, " ".join(argv))
        return out, err

    def unlink_root(self, *links: str, **kwargs: Any) -> None:
        self.commands.append("unlink " + " ".join(links))
        for link in links:
            self._path(link).unlink(missing_ok=True)

    def _answer(self, argv: list[str], stdin: str | None) -> tuple[int, str, str]:
        match argv:
            case ["cat", "/etc/iscsi/initiatorname.iscsi"]:
                return 0, f"InitiatorName={INITIATOR}\n", ""
            case ["iscsiadm", "-m", "session"]:
                if not self.sessions:
                    return 21, "", "iscsiadm: No active sessions.\n"
                return 0, "".join(f"tcp: [{s.sid}] {p},1 {i} (non-flash)\n"
                                  for (p, i), s in self.sessions.items()), ""
            case ["iscsiadm", "-m", "node"]:
                if not self.nodes:
                    return 21, "", "iscsiadm: No records found\n"
                return 0, "".join(f"{p},1 {i}\n" for p, i in self.nodes), ""
            case ["iscsiadm", "-m", "node", "-T", iqn, "-p", portal, *op]:
                return self._node(portal, iqn, op)
            case ["tee", "-a", path]:
                return self._write_sysfs(path, stdin or "")
            case ["blockdev", "--flushbufs", device]:
                return (0, "", "") if self._path(device).exists() else (
                    1, "", f"blockdev: cannot open {device}: No such file or directory\n")
            case ["multipathd", "show", "status"]:
                if not self.multipathd:
                    return 1, "", "multipathd: not running\n"
                return 0, "path checker states:\nup                  1\n", ""
            case ["multipath", "-a", wwid]:
                return 0, f"wwid '{wwid}' added\n", ""
            case ["multipathd", "add", "path", device]:
                self._make_map(os.path.basename(device))
                return 0, "ok\n", ""
            case ["multipath", "-C", dm]:
                return (0, "", "") if dm in self.maps else (1, "", f"{dm}: not a map\n")
            case ["multipath", "-f", name]:
                self._remove_map(name)
                return 0, "", ""
            case ["multipathd", "show", "paths", "raw", "format", "%d"]:
                return 0, "".join(f"{d}\n" for d in self._mapped_disks()), ""
        return 127, "", f"fake host: no answer for {' '.join(argv)}\n"

    def _node(self, portal: str, iqn: str, op: list[str]) -> tuple[int, str, str]:
        key = (portal, iqn)
        if op == ["--interface", "default", "--op", "new"]:
            self.nodes[key] = {"node.startup": "manual"}
            return 0, f"New iSCSI node [tcp:[hw=,ip=,net_if=,iscsi_if=default] {portal},-1 " \
                      f"{iqn}] added\n", ""
        if key not in self.nodes:
            return 21, "", "iscsiadm: No records found\n"
        match op:
            case []:
                return 0, _record(iqn, self.nodes[key]), ""
            case ["--op", "update", "-n", name, "-v", value]:
                self.nodes[key][name] = value
                return 0, "", ""
            case ["--login"]:
                return self._login(key)
            case ["--logout"]:
                session = self.sessions.pop(key, None)
                if session is None:
                    return 21, "", "iscsiadm: No matching sessions found\n"
                return 0, f"Logout of [sid: {session.sid}, target: {iqn}, portal: " \
                          f"{portal.replace(':', ',')}] successful.\n", ""
            case ["--op", "delete"]:
                del self.nodes[key]
                return 0, "", ""
        return 127, "", f"fake host: no answer for iscsiadm node {op}\n"

    def _login(self, key: tuple[str, str]) -> tuple[int, str, str]:
        portal, iqn = key
        target = self.targets.get(iqn)
        if target is None or target.portal != portal:
            return 24, "", "iscsiadm: Could not login to [...]: target not found\n"
        if self.nodes[key].get("node.session.auth.authmethod") != "CHAP":
            return 24, "", "iscsiadm: Login failed: authorization failure\n"
        session = Session(self._next_sid, target)
        self._next_sid += 1
        self.sessions[key] = session
        host = session.scsi_host
        # both sysfs classes of the SCSI host lead to the same device directory
        device = self.root / f"sys/devices/platform/host{host}"
        (device / f"session{session.sid}/target{host}:0:0").mkdir(parents=True)
        for cls in ("iscsi_host", "scsi_host"):
            (self.root / f"sys/class/{cls}/host{host}").mkdir()
            (self.root / f"sys/class/{cls}/host{host}/device").symlink_to(device)
        return 0, f"Login to [iface: default, target: {iqn}, portal: " \
                  f"{portal.replace(':', ',')}] successful.\n", ""

    # --- what the kernel and udev do -------------------------------------------

    def _write_sysfs(self, path: str, text: str) -> tuple[int, str, str]:
        parts = path.strip("/").split("/")
        if parts[:3] == ["sys", "class", "scsi_host"] and parts[4] == "scan":
            *_channel_target, lun = text.split()
            self._scan(int(parts[3][4:]), int(lun))
            return 0, text, ""
        if parts[:2] == ["sys", "block"] and parts[3:] == ["device", "delete"]:
            self._delete_disk(parts[2])
            return 0, text, ""
        return 1, "", f"tee: {path}: No such file or directory\n"

    def _scan(self, host: int, lun: int) -> None:
        session = next(s for s in self.sessions.values() if s.scsi_host == host)
        if lun not in session.target.luns or lun in session.disks:
            return
        name = f"sd{chr(self._next_disk)}"
        self._next_disk += 1
        session.disks[lun] = name
        (self.root / f"sys/devices/platform/host{host}/session{session.sid}"
         f"/target{host}:0:0/{host}:0:0:{lun}/block/{name}").mkdir(parents=True)
        block = self.root / f"sys/block/{name}"
        (block / "device").mkdir(parents=True)
        (block / "holders").mkdir()
        (block / "device/wwid").write_text(f"naa.{_wwid(session.target, lun)[1:]}\n")
        (block / "device/delete").write_text("")
        (self.root / f"dev/{name}").write_text("")
        (self.root / f"dev/disk/by-path/ip-{session.target.portal}-iscsi-"
         f"{session.target.iqn}-lun-{lun}").symlink_to(f"../../{name}")
        (self.root / f"dev/disk/by-id/scsi-{_wwid(session.target, lun)}"
         ).symlink_to(f"../../{name}")

    def _delete_disk(self, name: str) -> None:
        session, lun = next((s, lun) for s in self.sessions.values()
                            for lun, disk in s.disks.items() if disk == name)
        del session.disks[lun]
        host = session.scsi_host
        shutil.rmtree(self.root / f"sys/devices/platform/host{host}/session{session.sid}"
                      f"/target{host}:0:0/{host}:0:0:{lun}")
        shutil.rmtree(self.root / f"sys/block/{name}")
        for link in self._links_to(name):
            link.unlink()
        (self.root / f"dev/{name}").unlink()

    def _make_map(self, disk: str) -> None:
        wwid = "3" + (self.root / f"sys/block/{disk}/device/wwid").read_text().strip()[4:]
        dm = f"dm-{len(self.maps)}"
        self.maps[dm] = wwid
        (self.root / f"sys/block/{dm}/dm").mkdir(parents=True)
        (self.root / f"sys/block/{dm}/dm/uuid").write_text(f"mpath-{wwid}\n")
        (self.root / f"sys/block/{dm}/dm/name").write_text(f"{wwid}\n")
        (self.root / f"sys/block/{disk}/holders/{dm}").symlink_to(f"../../{dm}")
        (self.root / f"dev/{dm}").write_text("")
        (self.root / f"dev/mapper/{wwid}").symlink_to(f"../{dm}")

    def _remove_map(self, name: str) -> None:
        dm = next(d for d, w in self.maps.items() if w == name)
        del self.maps[dm]
        for holder in self.root.glob(f"sys/block/*/holders/{dm}"):
            holder.unlink()
        shutil.rmtree(self.root / f"sys/block/{dm}")
        (self.root / f"dev/{dm}").unlink()
        (self.root / f"dev/mapper/{name}").unlink()

    def _mapped_disks(self) -> list[str]:
        return sorted(p.parts[-3] for p in self.root.glob("sys/block/*/holders/dm-*"))

    def _links_to(self, name: str) -> list[Path]:
        return [link for link in self.root.glob("dev/disk/*/*")
                if link.is_symlink() and os.readlink(link) == f"../../{name}"]

    # --- queries for the tests -------------------------------------------------

    def disk(self, iqn: str, lun: int) -> str | None:
        """The sdX of a LUN, if the host has it."""
        return next((s.disks.get(lun) for (_, i), s in self.sessions.items() if i == iqn),
                    None)

    def _path(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def _wwid(target: Target, lun: int) -> str:
    """udev's form of tgt's NAA identifier for a LUN."""
    return f"360000000000000000e000000{target.tid:04x}{lun:04x}"


def _record(iqn: str, settings: dict[str, str]) -> str:
    body = "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))
    return f"# BEGIN RECORD 2.1.8\nnode.name = {iqn}\n{body}# END RECORD\n"


def install(monkeypatch: pytest.MonkeyPatch, host: FakeIscsiHost) -> None:
    """Point os-brick's file reads (glob, os.path, open) at ``host.root``, its
    privileged helpers at ``host``, and its one-second polls at a yield."""
    root = str(host.root)

    def inside(path: str) -> str:
        return root + path

    def outside(path: str) -> str:
        return path[len(root):] if path.startswith(root) else path

    files = SimpleNamespace(
        path=SimpleNamespace(
            exists=lambda p: os.path.exists(inside(p)),
            islink=lambda p: os.path.islink(inside(p)),
            realpath=lambda p: outside(os.path.realpath(inside(p))),
            split=os.path.split),
        listdir=lambda p: os.listdir(inside(p)),
        readlink=lambda p: os.readlink(inside(p)),
        stat=lambda p: os.stat(inside(p)))
    finder = SimpleNamespace(glob=lambda pattern: [outside(p) for p in
                                                   globlib.glob(inside(pattern))])

    def open_inside(path: str, *args: Any, **kwargs: Any) -> Any:
        return open(inside(path), *args, **kwargs)

    for module in (linuxscsi, brick_iscsi):
        monkeypatch.setattr(module, "os", files)
        monkeypatch.setattr(module, "glob", finder)
    monkeypatch.setattr(linuxscsi, "open", open_inside, raising=False)
    monkeypatch.setattr(linuxscsi, "priv_rootwrap",
                        SimpleNamespace(execute=host.execute, unlink_root=host.unlink_root))
    monkeypatch.setattr(brick_iscsi, "time",
                        SimpleNamespace(time=time.time, sleep=lambda _seconds: time.sleep(0)))


@contextlib.contextmanager
def os_brick_setup(lock_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tether's os-brick setup, with os-brick's global state restored after."""
    monkeypatch.setattr(privileged.default, "client_mode", privileged.default.client_mode)
    setup_os_brick(str(lock_path))
    try:
        yield
    finally:
        cfg.CONF.clear_override("lock_path", group="os_brick")
