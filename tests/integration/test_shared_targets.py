"""A backend that shares targets (``[volume] shared_targets = True``) on the
real daemons: an attach held inside the real connector keeps a detach of
another volume of the same backend on this host waiting on the host-wide
lock (keyed by the backend's service_uuid) until it is done."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from tests.harness import wait_for
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, domain_xml, real_tether, server
from tether.compute.locks import HostLocks
from tether.connection import ConnectionInfo, Connector
from tether.connectors.base import VolumeConnector
from tether.virt.driver import DiskSource, disk_alias


class GatedConnector:
    """The real connector; ``connect`` of the volume named by ``gated`` stops,
    once the real connect is done, at a gate the test opens.  Records each
    connect and disconnect as it ends, and whether any two overlapped."""

    def __init__(self, real: VolumeConnector) -> None:
        self.real = real
        self.connector_type = real.connector_type
        self.gated: str | None = None
        self.entered, self.gate = threading.Event(), threading.Event()
        self.calls: list[tuple[str, str]] = []
        self.busy = self.overlaps = 0
        self._lock = threading.Lock()

    def properties(self) -> Connector:
        return self.real.properties()

    @contextlib.contextmanager
    def _inside(self, call: str, volume_id: str) -> Iterator[None]:
        with self._lock:
            self.busy += 1
            self.overlaps += self.busy > 1
        try:
            yield
        finally:
            with self._lock:
                self.busy -= 1
                self.calls.append((call, volume_id))

    def connect(self, info: ConnectionInfo) -> DiskSource:
        with self._inside("connect", info.volume_id):
            source = self.real.connect(info)
            if info.volume_id == self.gated:
                self.entered.set()
                assert self.gate.wait(30)
            return source

    def disconnect(self, info: ConnectionInfo, *, force: bool = False) -> None:
        with self._inside("disconnect", info.volume_id):
            self.real.disconnect(info)


class CountingLocks(HostLocks):
    """The real host locks, counting who asked for one (before it is granted;
    a thread taking a lock it holds again is not asking)."""

    def __init__(self, lock_dir: str) -> None:
        super().__init__(lock_dir)
        self.asked: list[str] = []

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        if not self.holds(name):
            self.asked.append(name)
        with super().hold(name):
            yield


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
           libvirtd: None) -> Iterator[RealTether]:
    with real_tether(str(tmp_path_factory.mktemp("shared")), tgtd,
                     {"volume": {"shared_targets": True}}, wrap=GatedConnector) as t:
        connections = t.embedded.compute.manager.connections
        connections.locks = CountingLocks(connections.locks.lock_dir)
        yield t


def _finished(t: RealTether, sid: str, action: str) -> bool:
    rows = t.nova().get(f"/v2.1/servers/{sid}/os-instance-actions").json["instanceActions"]
    return any(r["action"] == action and r["finish_time"] for r in rows)


def test_detach_waits_for_an_attach_on_the_same_shared_backend(tether: RealTether) -> None:
    nova, cinder = tether.nova(), tether.api()
    connector, locks = tether.connector, tether.embedded.compute.manager.connections.locks
    assert isinstance(connector, GatedConnector) and isinstance(locks, CountingLocks)
    a, b = server(tether, nova), server(tether, nova)
    first = tether.create_volume(cinder)
    second = tether.create_volume(cinder)
    assert first["shared_targets"] and second["shared_targets"]
    backend = first["service_uuid"]
    assert backend and second["service_uuid"] == backend
    url = "/v2.1/servers/{}/os-volume_attachments"
    assert nova.post(url.format(a), {"volumeAttachment": {"volumeId": first["id"]}}
                     ).status_code == 200
    tether.wait_action(nova, a, "attach_volume")

    # an attach of the second volume holds the backend's lock inside connect() ...
    connector.gated = second["id"]
    try:
        assert nova.post(url.format(b), {"volumeAttachment": {"volumeId": second["id"]}}
                         ).status_code == 200
        assert connector.entered.wait(30)
        # ... so the detach of the first, on another server, waits for that lock
        assert nova.delete(f"{url.format(a)}/{first['id']}").status_code == 202
        wait_for(lambda: len(locks.asked) == 3 or _finished(tether, a, "detach_volume"), 30,
                 "the detach at the lock (or, wrongly, done)")
        assert not _finished(tether, a, "detach_volume")
        assert ("disconnect", first["id"]) not in connector.calls
        assert disk_alias(first["id"]) in domain_xml(a)
        assert tether.target.exports()[first["id"]].initiators == {tether.initiator}
        assert cinder.get(f"/v3/volumes/{first['id']}").json["volume"][
            "status"] == "detaching"
        assert locks.asked == [backend] * 3
    finally:
        connector.gate.set()
    assert not tether.wait_action(nova, b, "attach_volume")["message"]
    assert not tether.wait_action(nova, a, "detach_volume")["message"]
    assert connector.overlaps == 0
    assert connector.calls.index(("disconnect", first["id"])) > connector.calls.index(
        ("connect", second["id"]))
    assert disk_alias(first["id"]) not in domain_xml(a)
    assert disk_alias(second["id"]) in domain_xml(b)
    assert first["id"] not in tether.target.exports()
    assert tether.target.exports()[second["id"]].initiators == {tether.initiator}
    assert tether.target.sessions(second["id"]) == {tether.initiator}
