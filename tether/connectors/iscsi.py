"""``iscsi``: the host's own initiator (open-iscsi) logs in to the target
through os-brick, and the guest gets the host block device — the seed's
LibvirtISCSIVolumeDriver path.

os-brick does the host work: on connect it creates the node record, hands
it the CHAP credentials, logs in, scans for the LUN and waits for its
device (and, with multipath, for the device-mapper map over every path);
on disconnect it flushes and removes the LUN's devices, and logs out and
deletes the node record only when no other LUN of that target still lives
in the session.

Tether runs as root, so os-brick needs neither sudo nor rootwrap nor a
privsep daemon: :func:`setup_os_brick` switches os-brick's privileged
context to run in this process, and its commands run directly.  The CHAP
password reaches iscsiadm's command line (that is how open-iscsi takes it);
os-brick masks it in its own logs and errors and Tether logs neither the
command nor the connection properties.
"""

from __future__ import annotations

import logging
import os
import platform
import re
from collections.abc import Callable
from typing import Any

from os_brick import exception as brick_exception
from os_brick import privileged
from os_brick.initiator.connectors.iscsi import ISCSIConnector
from oslo_concurrency import processutils
from oslo_config import cfg

from tether.connection import ConnectionInfo, Connector
from tether.connectors.base import HostSession
from tether.exceptions import BackendError
from tether.executor import CommandError, ProcessRunner, Runner
from tether.virt.driver import BlockDiskSource

LOG = logging.getLogger(__name__)

INITIATOR_FILE = "/etc/iscsi/initiatorname.iscsi"

# iscsiadm's exit status for "no such object": -m session with no session at all
NO_OBJECTS_FOUND = 21
# iscsiadm -m session: "tcp: [1] 127.0.0.1:3260,1 iqn.2010-10.org.tether:volume-… (non-flash)"
_SESSION_RE = re.compile(r"^\S+: \[\d+\] (\S+),\d+ (\S+)")

# os-brick's executor: execute(*argv, run_as_root=..., check_exit_code=...,
# process_input=..., ...) -> (stdout, stderr), raising ProcessExecutionError
BrickExecute = Callable[..., tuple[str, str]]


def setup_os_brick(lock_path: str) -> None:
    """Configure what os-brick keeps in process-wide state.

    Its host-wide locks (one connect or disconnect at a time, one login per
    portal and target) are files under ``[os_brick] lock_path`` of oslo's
    global configuration: the same directory as Tether's own host locks, so
    every Tether service on the host serialises on the same files.  As root,
    its privileged functions run in this process instead of a privsep daemon
    started through sudo."""
    cfg.CONF.set_override("lock_path", lock_path, group="os_brick")
    if os.geteuid() == 0:
        privileged.default.set_client_mode(False)


class IscsiConnector:
    connector_type = "iscsi"

    def __init__(self, host: str, ip: str | None = None, *, multipath: bool = False,
                 execute: BrickExecute | None = None, runner: Runner | None = None) -> None:
        """``execute`` replaces os-brick's own executor (tests record the
        commands with it); ``None`` runs them on this host.  ``runner``: for
        the commands Tether runs itself (listing the sessions)."""
        self.host = host
        self.ip = ip
        self.multipath = multipath
        self.runner = runner or ProcessRunner()
        # root_helper is never used: os-brick's executor drops it and runs the
        # command itself (in process as root, see setup_os_brick)
        self._brick = ISCSIConnector(root_helper="", execute=execute,
                                     use_multipath=multipath)

    def properties(self) -> Connector:
        """This host's open-iscsi initiator name: the one its logins present,
        so the one the target's ACL must admit."""
        initiator = self._brick.get_initiator()
        if not initiator:
            raise BackendError(f"This host has no iSCSI initiator name in {INITIATOR_FILE}: "
                               "install open-iscsi (it creates the file), or use "
                               "[compute] volume_connector = iscsi-direct.")
        return Connector(host=self.host, initiator=initiator, ip=self.ip,
                         multipath=self.multipath, platform=platform.machine(),
                         os_type="linux", connector_type=self.connector_type)

    def connect(self, info: ConnectionInfo) -> BlockDiskSource:
        try:
            device = self._brick.connect_volume(_brick_properties(info))
        except (brick_exception.BrickException, processutils.ProcessExecutionError) as exc:
            raise BackendError(f"Connecting volume {info.volume_id} (target {info.target_iqn} "
                               f"at {info.target_portal}) to this host failed: {exc}") from exc
        LOG.info("volume %s is %s on this host", info.volume_id, device["path"])
        return BlockDiskSource(path=device["path"])

    def disconnect(self, info: ConnectionInfo, *, force: bool = False) -> None:
        try:
            self._brick.disconnect_volume(_brick_properties(info),
                                          {"path": self._path_used(info)},
                                          force=force, ignore_errors=force)
        except (brick_exception.BrickException, processutils.ProcessExecutionError) as exc:
            raise BackendError(f"Disconnecting volume {info.volume_id} (target "
                               f"{info.target_iqn} at {info.target_portal}) from this host "
                               f"failed: {exc}") from exc

    def host_sessions(self) -> frozenset[HostSession]:
        """``iscsiadm -m session``: every session of open-iscsi on this host.
        (Only unit-tested, with a recorded runner: the development machines
        have no iscsi_tcp kernel module, so no host session can exist there.)"""
        try:
            result = self.runner.run(["iscsiadm", "-m", "session"], check=False)
        except OSError as exc:
            raise BackendError(f"Cannot list this host's iSCSI sessions: {exc}") from exc
        if result.returncode == NO_OBJECTS_FOUND:
            return frozenset()
        if result.returncode != 0:
            failed = CommandError(result.argv, result.returncode, result.stdout, result.stderr)
            raise BackendError(f"Cannot list this host's iSCSI sessions: {failed}")
        return parse_sessions(result.stdout)

    def _path_used(self, info: ConnectionInfo) -> str:
        """The device the guest wrote through, which os-brick flushes before
        removing it.  Single path: the LUN's by-path link, which leads to the
        very device ``connect`` returned.  Multipath: none of the paths,
        since the guest used the map, which os-brick flushes on its own."""
        if self.multipath:
            return ""
        portal = info.target_portal.replace("[", "").replace("]", "")
        return f"/dev/disk/by-path/ip-{portal}-iscsi-{info.target_iqn}-lun-{info.target_lun}"


def parse_sessions(text: str) -> frozenset[HostSession]:
    """Sessions from ``iscsiadm -m session`` output (one a line)."""
    found = set()
    for line in text.splitlines():
        m = _SESSION_RE.match(line.strip())
        if m:
            found.add(HostSession(target_iqn=m.group(2), portal=m.group(1)))
    return frozenset(found)


def _brick_properties(info: ConnectionInfo) -> dict[str, Any]:
    """``connection_info.data`` as os-brick reads it (a fresh dict: os-brick
    may add keys to what it is given).

    The plural keys list every path to the LUN (one portal today), so that
    os-brick never runs a sendtargets discovery — which would leave a node
    record behind for every target the portal shows this host — and, on
    disconnect, never looks for one in iscsiadm's discovery database."""
    props: dict[str, Any] = {
        "volume_id": info.volume_id,
        "target_portal": info.target_portal,
        "target_iqn": info.target_iqn,
        "target_lun": info.target_lun,
        "target_portals": [info.target_portal],
        "target_iqns": [info.target_iqn],
        "target_luns": [info.target_lun],
        "access_mode": info.access_mode,
        "encrypted": False,
    }
    if info.auth_username:
        props.update(auth_method="CHAP", auth_username=info.auth_username,
                     auth_password=info.auth_password)
    return props
