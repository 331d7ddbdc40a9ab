"""A backend whose volumes share iSCSI targets: the host side of attach and
detach runs under one host-wide lock per backend, so a detach never logs a
session out under an attach that is using it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.harness import Tether
from tether.connection import ConnectionInfo
from tether.connectors.fake import FakeConnector
from tether.virt.driver import NetworkDiskSource
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


class GatedConnector(FakeConnector):
    """connect() of a chosen volume waits at a gate the test opens; every
    connect and disconnect is recorded with whether it overlapped another."""

    def __init__(self) -> None:
        super().__init__()
        self.gated: str | None = None
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.busy = 0
        self.overlaps = 0
        self.lock = threading.Lock()

    def _enter(self) -> None:
        with self.lock:
            self.busy += 1
            self.overlaps += self.busy > 1

    def _leave(self) -> None:
        with self.lock:
            self.busy -= 1

    def connect(self, info: ConnectionInfo) -> NetworkDiskSource:
        self._enter()
        try:
            if info.volume_id == self.gated:
                self.entered.set()
                assert self.gate.wait(10)
            return super().connect(info)
        finally:
            self._leave()

    def disconnect(self, info: ConnectionInfo, *, force: bool = False) -> None:
        self._enter()
        try:
            super().disconnect(info)
        finally:
            self._leave()


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tether]:
    t = Tether(str(tmp_path_factory.mktemp("shared")), FakeTarget(), FakeDriver(),
               GatedConnector(), overrides={"volume": {"shared_targets": True}})
    try:
        yield t
    finally:
        t.stop()


def test_attach_and_detach_on_one_shared_target_never_interleave(tether: Tether) -> None:
    nova, cinder = tether.nova(), tether.api()
    connector = tether.connector
    assert isinstance(connector, GatedConnector)
    a, b = tether.create_server(nova)["id"], tether.create_server(nova)["id"]
    first = tether.create_volume(cinder)
    second = tether.create_volume(cinder)["id"]
    assert first["shared_targets"] is True and first["service_uuid"]
    nova.post(f"/v2.1/servers/{a}/os-volume_attachments",
              {"volumeAttachment": {"volumeId": first["id"]}})
    tether.wait_action(nova, a, "attach_volume")

    # an attach on the shared target holds the lock inside connect() ...
    connector.gated = second
    nova.post(f"/v2.1/servers/{b}/os-volume_attachments",
              {"volumeAttachment": {"volumeId": second}})
    assert connector.entered.wait(10)
    # ... so the detach of the other volume (same backend, same host) waits
    assert nova.delete(f"/v2.1/servers/{a}/os-volume_attachments/{first['id']}"
                       ).status_code == 202
    assert not threading.Event().wait(0.3)  # give a wrongly unlocked detach time to run
    assert ("disconnect", first["id"]) not in connector.calls
    connector.gate.set()
    tether.wait_action(nova, b, "attach_volume")
    tether.wait_action(nova, a, "detach_volume")
    assert ("disconnect", first["id"]) in connector.calls
    assert connector.overlaps == 0
    connect_b = connector.calls.index(("connect", second))
    assert connector.calls.index(("disconnect", first["id"])) > connect_b
