"""RPC and notification behaviour every transport must show (in-process and
RabbitMQ run the same assertions)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import oslo_messaging as messaging
import pytest

from tether import config
from tether.context import RequestContext
from tether.exceptions import VolumeNotFound
from tether.messaging import transport as tr
from tether.rpc import Rpc

CTX = RequestContext("u", "p")


class Endpoint:
    target = messaging.Target(version="1.0")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[Any] = []
        self.event = threading.Event()

    def echo(self, ctx: RequestContext, value: Any) -> Any:
        self.seen.append((ctx.user_id, value))
        return {"from": self.name, "value": value}

    def note(self, ctx: RequestContext, value: Any) -> None:
        self.seen.append((ctx.user_id, value))
        self.event.set()

    @messaging.expected_exceptions(VolumeNotFound)
    def missing(self, ctx: RequestContext, volume_id: str) -> None:
        raise VolumeNotFound(volume_id)

    def slow(self, ctx: RequestContext, seconds: float) -> None:
        time.sleep(seconds)


@contextmanager
def bus(url: str, tmp: str) -> Iterator[Rpc]:
    conf = config.load(state_dir=tmp, overrides={"DEFAULT": {"transport_url": url}})
    rpc = Rpc(conf)
    try:
        yield rpc
    finally:
        rpc.stop()


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def check_call_and_cast(rpc: Rpc) -> None:
    t, ep = topic(), Endpoint("h1")
    rpc.serve(t, "h1", [ep])
    client = rpc.client(t, "h1", timeout=10)
    assert client.call(CTX, "echo", value=[1, "x"]) == {"from": "h1", "value": [1, "x"]}
    client.cast(CTX, "note", value=7)
    assert ep.event.wait(10)
    assert ("u", 7) in ep.seen


def check_remote_domain_error(rpc: Rpc) -> None:
    t = topic()
    rpc.serve(t, "h1", [Endpoint("h1")])
    with pytest.raises(VolumeNotFound) as err:
        rpc.client(t, "h1", timeout=10).call(CTX, "missing", volume_id="v-9")
    assert err.value.message == "Volume v-9 could not be found."


def check_server_targeting(rpc: Rpc) -> None:
    t, e1, e2 = topic(), Endpoint("h1"), Endpoint("h2")
    rpc.serve(t, "h1", [e1])
    rpc.serve(t, "h2", [e2])
    assert rpc.client(t, "h2", timeout=10).call(CTX, "echo", value=1)["from"] == "h2"
    assert rpc.client(t, "h1", timeout=10).call(CTX, "echo", value=1)["from"] == "h1"


def check_call_timeout(rpc: Rpc) -> None:
    t = topic()
    rpc.serve(t, "h1", [Endpoint("h1")])
    with pytest.raises(messaging.MessagingTimeout):
        rpc.client(t, "h1", timeout=0.5).call(CTX, "slow", seconds=2)


def check_notifications(url: str, tmp: str) -> None:
    conf = config.load(state_dir=tmp, overrides={"DEFAULT": {"transport_url": url}})
    transport = tr.notification_transport(conf, url)
    t = topic()
    got: list[tuple[str, Any]] = []
    done = threading.Event()

    class Listener:
        def info(self, ctxt: Any, publisher_id: str, event_type: str, payload: Any,
                 metadata: Any) -> None:
            got.append((event_type, payload))
            done.set()

    listener = messaging.get_notification_listener(
        transport, [messaging.Target(topic=t)], [Listener()], executor="threading")
    listener.start()
    try:
        notifier = messaging.Notifier(transport, publisher_id="compute.h1", driver="messaging",
                                      topics=[t])
        notifier.info({}, "volume.detach.end", {"volume_id": "v1"})
        assert done.wait(10)
        assert got == [("volume.detach.end", {"volume_id": "v1"})]
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()
