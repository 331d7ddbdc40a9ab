"""The ``iscsi`` connector at os-brick's executor level: the real os-brick
runs against a fake host (``fake_iscsi_host``) that answers its commands and
keeps a small sysfs; each test checks the exact commands os-brick ran and
what the host holds afterwards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from oslo_config import cfg

from tests.unit.connectors.fake_iscsi_host import (
    INITIATOR,
    FakeIscsiHost,
    Target,
    install,
    os_brick_setup,
)
from tether import config
from tether.connection import ConnectionInfo
from tether.connectors.iscsi import IscsiConnector
from tether.exceptions import BackendError
from tether.service import make_connector
from tether.virt.driver import BlockDiskSource
from tether.virt.fake import FakeDriver

PORTAL = "127.0.0.1:3260"
IQN = "iqn.2010-10.org.tether:volume-v1"
SECRET = "chap-Secret-0xq7"
NODE = f"iscsiadm -m node -T {IQN} -p {PORTAL}"


def _info(lun: int = 1, volume_id: str = "v1", password: str = SECRET) -> ConnectionInfo:
    return ConnectionInfo(volume_id=volume_id, target_iqn=IQN, target_portal=PORTAL,
                          target_lun=lun, auth_username="user-v1", auth_password=password)


@pytest.fixture(autouse=True)
def _os_brick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    with os_brick_setup(tmp_path / "locks", monkeypatch):
        yield


def _host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, luns: set[int],
          multipathd: bool = False) -> FakeIscsiHost:
    host = FakeIscsiHost(tmp_path / "host", [Target(IQN, PORTAL, tid=1, luns=luns)],
                         multipathd=multipathd)
    install(monkeypatch, host)
    return host


LOGIN = [
    "multipathd show status",
    NODE,
    f"{NODE} --interface default --op new",
    f"{NODE} --op update -n node.session.scan -v manual",
    f"{NODE} --op update -n node.session.auth.authmethod -v CHAP",
    f"{NODE} --op update -n node.session.auth.username -v user-v1",
    f"{NODE} --op update -n node.session.auth.password -v {SECRET}",
    "iscsiadm -m session",
    f"{NODE} --login",
    f"{NODE} --op update -n node.startup -v automatic",
    "iscsiadm -m session",
]


def test_connect_logs_in_scans_and_gives_the_guest_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, {1})
    connector = IscsiConnector("h1", execute=host.execute)

    assert connector.connect(_info()) == BlockDiskSource("/dev/sdb")

    assert host.commands == [*LOGIN, "tee -a /sys/class/scsi_host/host2/scan <<< 0 0 1"]
    assert host.nodes[(PORTAL, IQN)]["node.session.auth.password"] == SECRET
    assert list(host.sessions) == [(PORTAL, IQN)]


def test_connect_again_reuses_the_session(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, {1})
    connector = IscsiConnector("h1", execute=host.execute)
    connector.connect(_info())
    host.commands.clear()

    assert connector.connect(_info()) == BlockDiskSource("/dev/sdb")
    assert host.commands == [
        "multipathd show status",
        NODE,
        f"{NODE} --op update -n node.session.scan -v manual",
        f"{NODE} --op update -n node.session.auth.authmethod -v CHAP",
        f"{NODE} --op update -n node.session.auth.username -v user-v1",
        f"{NODE} --op update -n node.session.auth.password -v {SECRET}",
        "iscsiadm -m session",
        "tee -a /sys/class/scsi_host/host2/scan <<< 0 0 1",
    ]


def _detach_of(disk: str, others: list[str]) -> list[str]:
    """What os-brick runs to take one LUN's disk off a single-path host."""
    return [
        "iscsiadm -m node",
        "iscsiadm -m session",
        "multipathd show status",
        f"blockdev --flushbufs /dev/{disk}",
        f"tee -a /sys/block/{disk}/device/delete <<< 1",
        *others,
    ]


LOGOUT = [
    f"{NODE} --op update -n node.startup -v manual",
    f"{NODE} --logout",
    f"{NODE} --op delete",
]


def test_disconnect_flushes_removes_logs_out_and_deletes_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, {1})
    connector = IscsiConnector("h1", execute=host.execute)
    connector.connect(_info())
    host.commands.clear()

    connector.disconnect(_info(password=""))  # what the BDM keeps: no secret

    assert host.commands == _detach_of("sdb", LOGOUT)
    assert host.sessions == {} and host.nodes == {}
    assert not (host.root / "dev/sdb").exists()
    assert list((host.root / "dev/disk/by-path").iterdir()) == []
    assert list((host.root / "dev/disk/by-id").iterdir()) == []


def test_disconnect_keeps_the_session_another_lun_of_the_target_uses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, {1, 2})
    connector = IscsiConnector("h1", execute=host.execute)
    assert connector.connect(_info(1)) == BlockDiskSource("/dev/sdb")
    assert connector.connect(_info(2, "v2")) == BlockDiskSource("/dev/sdc")
    host.commands.clear()

    connector.disconnect(_info(1))

    assert host.commands == _detach_of("sdb", [])  # no logout, no node deletion
    assert host.disk(IQN, 1) is None and host.disk(IQN, 2) == "sdc"
    assert (PORTAL, IQN) in host.sessions and (PORTAL, IQN) in host.nodes

    host.commands.clear()
    connector.disconnect(_info(2, "v2"))

    assert host.commands == _detach_of("sdc", LOGOUT)
    assert host.sessions == {} and host.nodes == {}


def test_disconnect_of_what_is_not_connected_does_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, {1})
    connector = IscsiConnector("h1", execute=host.execute)

    connector.disconnect(_info())

    assert host.commands == ["iscsiadm -m node", "iscsiadm -m session"]


def test_multipath_gives_the_guest_the_map_and_flushes_the_map_on_disconnect(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, {1}, multipathd=True)
    connector = IscsiConnector("h1", multipath=True, execute=host.execute)
    wwid = "360000000000000000e00000000010001"

    assert connector.connect(_info()) == BlockDiskSource("/dev/dm-0")

    assert host.commands == [
        *LOGIN,  # in a thread of its own, as each portal gets one
        "tee -a /sys/class/scsi_host/host2/scan <<< 0 0 1",
        f"multipath -a {wwid}",
        "multipathd add path /dev/sdb",
        "multipath -C dm-0",
    ]
    assert host.maps == {"dm-0": wwid}

    host.commands.clear()
    connector.disconnect(_info())

    assert host.commands == [
        "iscsiadm -m node",
        "iscsiadm -m session",
        f"multipath -f {wwid}",  # the map is flushed; its paths are not
        "tee -a /sys/block/sdb/device/delete <<< 1",
        "multipathd show paths raw format %d",
        *LOGOUT,
    ]
    assert host.maps == {} and host.sessions == {} and host.nodes == {}


def test_failed_login_leaves_no_node_and_says_which_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = FakeIscsiHost(tmp_path / "host", [])  # the target does not export to us
    install(monkeypatch, host)
    connector = IscsiConnector("h1", execute=host.execute)
    # os-brick retries the whole connect (three times, 1 s apart): no waiting here
    monkeypatch.setattr("os_brick.utils._time_sleep", lambda _seconds: None)

    with pytest.raises(BackendError, match=f"volume v1 \\(target {IQN} at {PORTAL}\\)"):
        connector.connect(_info())

    assert host.sessions == {} and host.nodes == {}
    assert host.commands.count(f"{NODE} --login") == 3


def test_the_chap_secret_goes_to_iscsiadm_and_never_to_a_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    host = _host(tmp_path, monkeypatch, {1})
    connector = IscsiConnector("h1", execute=host.execute)

    connector.connect(_info())
    connector.disconnect(_info())

    assert f"{NODE} --op update -n node.session.auth.password -v {SECRET}" in host.commands
    assert "node.session.auth.password" in caplog.text  # os-brick did log the update...
    assert SECRET not in caplog.text  # ...masked


def test_properties_report_open_iscsis_initiator_and_the_connector(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = _host(tmp_path, monkeypatch, set())
    props = IscsiConnector("h1", "192.0.2.7", multipath=True,
                           execute=host.execute).properties()

    assert host.commands == ["cat /etc/iscsi/initiatorname.iscsi"]
    assert props.to_dict() | {"platform": "any"} == {
        "host": "h1", "initiator": INITIATOR, "ip": "192.0.2.7", "multipath": True,
        "platform": "any", "os_type": "linux", "connector_type": "iscsi"}


def test_configuration_picks_the_connector(tmp_path: Path) -> None:
    conf = config.load(state_dir=str(tmp_path), overrides={
        "compute": {"volume_connector": "iscsi", "volume_use_multipath": True}})
    connector = make_connector(conf, FakeDriver())
    assert isinstance(connector, IscsiConnector)
    assert connector.connector_type == "iscsi" and connector.multipath
    assert cfg.CONF.os_brick.lock_path == config.lock_dir(conf)

    direct = make_connector(config.load(state_dir=str(tmp_path)), FakeDriver())
    assert direct.connector_type == "iscsi-direct"


# -- the host's sessions (tether audit) ------------------------------------------------
# Unit-tested only: without the kernel's iscsi_tcp module (the development
# machines) open-iscsi can hold no session, so there is nothing real to list.

class SessionRunner:
    """Answers ``iscsiadm -m session`` as open-iscsi 2.1 does."""

    def __init__(self, returncode: int, stdout: str = "", stderr: str = "") -> None:
        self.answer = (returncode, stdout, stderr)
        self.argv: list[list[str]] = []

    def run(self, argv: list[str], *, check: bool = True, secrets: object = (),
            timeout: float | None = 60.0, cwd: str | None = None) -> object:
        from tether.executor import CommandResult

        self.argv.append(list(argv))
        return CommandResult(tuple(argv), *self.answer)


def test_host_sessions_lists_open_iscsi_sessions() -> None:
    runner = SessionRunner(0, f"tcp: [1] {PORTAL},1 {IQN} (non-flash)\n"
                              "tcp: [3] [fe80::1]:3260,1 iqn.2001-04.com.example:disk "
                              "(non-flash)\n")
    sessions = IscsiConnector("h", runner=runner).host_sessions()
    assert runner.argv == [["iscsiadm", "-m", "session"]]
    assert {(s.target_iqn, s.portal) for s in sessions} == {
        (IQN, PORTAL), ("iqn.2001-04.com.example:disk", "[fe80::1]:3260")}


def test_host_sessions_none_and_failure() -> None:
    none = SessionRunner(21, "", "iscsiadm: No active sessions.\n")
    assert IscsiConnector("h", runner=none).host_sessions() == frozenset()
    broken = SessionRunner(20, "", "iscsiadm: can not connect to iSCSI daemon (111)!\n")
    with pytest.raises(BackendError, match="can not connect to iSCSI daemon"):
        IscsiConnector("h", runner=broken).host_sessions()
