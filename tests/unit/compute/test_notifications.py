"""volume.attach / volume.detach notifications, consumed from the bus."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Notification, Tether, next_about, notifications
from tether.connectors.fake import FakeConnector
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tether]:
    t = Tether(str(tmp_path_factory.mktemp("notify")), FakeTarget(), FakeDriver(),
               FakeConnector(),
               overrides={"oslo_messaging_notifications": {"driver": ["messagingv2"]}})
    try:
        yield t
    finally:
        t.stop()


@pytest.fixture
def received(tether: Tether) -> Iterator[queue.Queue[Notification]]:
    with notifications(tether.conf) as got:
        yield got


def test_attach_and_detach_announce_start_and_end(tether: Tether, received: Any) -> None:
    nova, _, sid, vid = tether.server_with_volume()
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    tether.wait_action(nova, sid, "detach_volume")
    seen = [next_about(received, vid)[:2] for _ in range(4)]
    assert seen == [("info", "volume.attach.start"), ("info", "volume.attach.end"),
                    ("info", "volume.detach.start"), ("info", "volume.detach.end")]


def test_refused_detach_announces_error(tether: Tether, received: Any) -> None:
    nova, _, sid, vid = tether.server_with_volume()
    assert isinstance(tether.virt, FakeDriver)
    tether.virt.refuse_unplug.add(vid)
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    tether.wait_action(nova, sid, "detach_volume")
    events = [next_about(received, vid) for _ in range(3)]
    assert [e[:2] for e in events] == [("info", "volume.attach.start"),
                                       ("info", "volume.attach.end"),
                                       ("info", "volume.detach.start")]
    kind, event, payload = next_about(received, vid)
    assert (kind, event) == ("error", "volume.detach.error")
    assert payload["server_id"] == sid and "did not release" in payload["error"]
