"""Tether on the real daemons for integration tests: the private tgtd, the
host's libvirtd + QEMU, QEMU's iSCSI initiator.  Servers made through
:func:`server` are deleted through the API at the end (which also
disconnects what is still attached), so no domain or libvirt secret stays."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Callable, Iterator

from tests.harness import Api, Tether, wait_for
from tests.integration.daemons import Tgtd
from tether.connectors.base import VolumeConnector
from tether.connectors.iscsi_direct import IscsiDirectConnector
from tether.executor import ProcessRunner
from tether.virt.driver import NAME_PREFIX
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.targets.tgt import TgtTarget


class RealTether(Tether):
    initiator: str
    servers: list[str]


@contextlib.contextmanager
def real_tether(state_dir: str, tgtd: Tgtd,
                overrides: dict[str, dict[str, object]] | None = None,
                wrap: Callable[[VolumeConnector], VolumeConnector] | None = None
                ) -> Iterator[RealTether]:
    """``wrap`` puts a test's own connector around the real one (to hold an
    operation inside it, or to watch it)."""
    initiator = f"iqn.2010-10.org.tether:it-{uuid.uuid4().hex[:8]}"
    base: dict[str, dict[str, object]] = {
        "compute": {"device_detach_timeout": 1.0, "device_detach_attempts": 2}}
    for group, values in (overrides or {}).items():
        base.setdefault(group, {}).update(values)
    virt = LibvirtDriver(domain_prefix=str(base["compute"].get("domain_prefix", NAME_PREFIX)))
    connector: VolumeConnector = IscsiDirectConnector(virt, initiator, "testhost", "127.0.0.1")
    t = RealTether(state_dir,
                   TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port),
                   virt, wrap(connector) if wrap else connector, overrides=base)
    t.initiator, t.servers = initiator, []
    try:
        yield t
    finally:
        nova = t.nova("admin:p1")
        for sid in t.servers:
            nova.delete(f"/v2.1/servers/{sid}")
        for sid in t.servers:
            wait_for(lambda sid=sid: nova.get(f"/v2.1/servers/{sid}").status_code == 404, 30,
                     f"server {sid} deleted")
            virt.destroy(sid)
        t.stop()


def server(t: RealTether, nova: Api) -> str:
    sid: str = t.create_server(nova, f"it-{uuid.uuid4().hex[:6]}")["id"]
    t.servers.append(sid)
    return sid


def domain_xml(sid: str, inactive: bool = False) -> str:
    argv = ["virsh", "-c", "qemu:///system", "dumpxml", sid]
    if inactive:
        argv.append("--inactive")
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def secret_exists(vid: str) -> bool:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "secret-list"], capture_output=True,
                         text=True, check=True).stdout
    return f"volume-{vid}" in out  # whatever the deployment's prefix
