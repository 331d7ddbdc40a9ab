"""A connector for unit tests: records connections, can be told to fail."""

from __future__ import annotations

from tether.connection import ConnectionInfo, Connector
from tether.connectors.base import HostSession
from tether.exceptions import BackendError
from tether.virt.driver import NetworkDiskSource


class FakeConnector:
    connector_type = "fake"

    def __init__(self, initiator_iqn: str = "iqn.2010-10.org.tether:fake-host",
                 host: str = "fake-host") -> None:
        self.initiator_iqn = initiator_iqn
        self.host = host
        self.connected: dict[str, ConnectionInfo] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_on: set[str] = set()
        self.sessions: set[HostSession] = set()  # what a test says the host is logged in to

    def properties(self) -> Connector:
        return Connector(host=self.host, initiator=self.initiator_iqn,
                         connector_type=self.connector_type)

    def connect(self, info: ConnectionInfo) -> NetworkDiskSource:
        self.calls.append(("connect", info.volume_id))
        if "connect" in self.fail_on:
            raise BackendError(f"fake connect failure for {info.volume_id}")
        self.connected[info.volume_id] = info
        host, _, port = info.target_portal.rpartition(":")
        return NetworkDiskSource(info.target_iqn, info.target_lun, host, int(port),
                                 self.initiator_iqn, info.auth_username, "fake-secret")

    def disconnect(self, info: ConnectionInfo, *, force: bool = False) -> None:
        self.calls.append(("disconnect", info.volume_id))
        if "disconnect" in self.fail_on:
            raise BackendError(f"fake disconnect failure for {info.volume_id}")
        self.connected.pop(info.volume_id, None)

    def host_sessions(self) -> frozenset[HostSession]:
        return frozenset(self.sessions)
