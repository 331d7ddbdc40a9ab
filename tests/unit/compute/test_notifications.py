"""volume.attach / volume.detach notifications, consumed from the bus."""

from __future__ import annotations

import queue
import uuid
from collections.abc import Iterator
from typing import Any

import oslo_messaging as messaging
import pytest

from tests.harness import Tether
from tether.connectors.fake import FakeConnector
from tether.messaging import transport as tr
from tether.notifications import TOPIC
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
def received(tether: Tether) -> Iterator[queue.Queue[tuple[str, str, dict[str, Any]]]]:
    got: queue.Queue[tuple[str, str, dict[str, Any]]] = queue.Queue()

    class Endpoint:
        def info(self, ctxt: Any, publisher: str, event: str, payload: Any, md: Any) -> None:
            got.put(("info", event, payload))

        def error(self, ctxt: Any, publisher: str, event: str, payload: Any, md: Any) -> None:
            got.put(("error", event, payload))

    transport = tr.notification_transport(tether.conf, tether.conf.transport_url)
    listener = tr.notification_listener(transport, [messaging.Target(topic=TOPIC)],
                                        [Endpoint()], pool=f"test-{uuid.uuid4().hex}")
    listener.start()
    try:
        yield got
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


def _next(got: queue.Queue[tuple[str, str, dict[str, Any]]], vid: str
          ) -> tuple[str, str, dict[str, Any]]:
    while True:
        item = got.get(timeout=10)
        if item[2].get("volume_id") == vid:
            return item


def test_attach_and_detach_announce_start_and_end(tether: Tether, received: Any) -> None:
    nova, _, sid, vid = tether.server_with_volume()
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    tether.wait_action(nova, sid, "detach_volume")
    seen = [_next(received, vid)[:2] for _ in range(4)]
    assert seen == [("info", "volume.attach.start"), ("info", "volume.attach.end"),
                    ("info", "volume.detach.start"), ("info", "volume.detach.end")]


def test_refused_detach_announces_error(tether: Tether, received: Any) -> None:
    nova, _, sid, vid = tether.server_with_volume()
    assert isinstance(tether.virt, FakeDriver)
    tether.virt.refuse_unplug.add(vid)
    nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
    tether.wait_action(nova, sid, "detach_volume")
    events = [_next(received, vid) for _ in range(3)]
    assert [e[:2] for e in events] == [("info", "volume.attach.start"),
                                       ("info", "volume.attach.end"),
                                       ("info", "volume.detach.start")]
    kind, event, payload = _next(received, vid)
    assert (kind, event) == ("error", "volume.detach.error")
    assert payload["server_id"] == sid and "did not release" in payload["error"]
