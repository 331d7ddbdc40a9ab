"""The ``iscsi`` connector's real login and logout (open-iscsi through
os-brick) against a private tgtd.  Host logins need the kernel's iscsi_tcp
module; where it is missing (the development VMs, see machine facts) the
test is skipped and says so, and tests/unit/connectors/test_iscsi.py checks
the commands os-brick runs instead."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from os_brick import privileged
from oslo_config import cfg

from tests.integration.daemons import Tgtd
from tether.connection import ConnectionInfo
from tether.connectors.iscsi import IscsiConnector, setup_os_brick
from tether.executor import ProcessRunner
from tether.volume.targets.base import ChapCredentials, ExportSpec
from tether.volume.targets.tgt import TgtTarget


def _no_kernel_initiator() -> str | None:
    """Why this host's kernel cannot log in to iSCSI targets, or None."""
    if os.path.isdir("/sys/module/iscsi_tcp"):
        return None
    modprobe = shutil.which("modprobe")
    if modprobe and subprocess.run([modprobe, "iscsi_tcp"], capture_output=True,
                                   check=False).returncode == 0:
        return None
    return ("the host kernel has no iscsi_tcp module (no /sys/module/iscsi_tcp, and "
            "`modprobe iscsi_tcp` fails or modprobe is missing): host iSCSI login cannot "
            "work here")


@pytest.fixture
def iscsid() -> Iterator[None]:
    """open-iscsi's daemon, started for the test when it is not running."""
    reason = _no_kernel_initiator()
    if reason:
        pytest.skip(reason)
    if shutil.which("iscsiadm") is None or shutil.which("iscsid") is None:
        pytest.fail("iscsiadm and iscsid are needed (open-iscsi): run tools/bootstrap.sh")
    if subprocess.run(["pgrep", "-x", "iscsid"], capture_output=True,
                      check=False).returncode == 0:
        yield
        return
    proc = subprocess.Popen(["iscsid", "-f"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def connector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IscsiConnector]:
    monkeypatch.setattr(privileged.default, "client_mode", privileged.default.client_mode)
    setup_os_brick(str(tmp_path / "locks"))
    try:
        yield IscsiConnector("itest-host")
    finally:
        cfg.CONF.clear_override("lock_path", group="os_brick")


def _nodes() -> str:
    return subprocess.run(["iscsiadm", "-m", "node"], capture_output=True, text=True,
                          check=False).stdout


def test_login_gives_a_block_device_and_logout_removes_it(
        iscsid: None, connector: IscsiConnector, tgtd: Tgtd, tmp_path: Path) -> None:
    target = TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)
    volume_id = str(uuid.uuid4())
    backing = tmp_path / "volume"
    with open(backing, "wb") as f:
        f.truncate(8 << 20)
    initiator = connector.properties().initiator
    chap = ChapCredentials(f"u-{volume_id[:8]}", "chap-" + uuid.uuid4().hex[:12])
    where = target.export(ExportSpec(volume_id, str(backing), chap, frozenset({initiator})))
    info = ConnectionInfo(volume_id, where.target_iqn, where.target_portal, where.target_lun,
                          chap.username, chap.password)
    try:
        source = connector.connect(info)
        assert stat.S_ISBLK(os.stat(source.path).st_mode)
        assert target.sessions(volume_id) == {initiator}
        block = bytes(range(256)) * 16
        fd = os.open(source.path, os.O_WRONLY | os.O_SYNC)  # written through to the target
        try:
            os.pwrite(fd, block, 4096)
        finally:
            os.close(fd)
        with open(backing, "rb") as f:
            f.seek(4096)
            assert f.read(4096) == block

        connector.disconnect(info)

        assert not os.path.exists(source.path)
        assert target.sessions(volume_id) == frozenset()
        assert where.target_iqn not in _nodes()
    finally:
        connector.disconnect(info)  # idempotent: a no-op when the test got there
        target.unexport(volume_id)
