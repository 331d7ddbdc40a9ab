"""The ``tether-inproc://`` oslo.messaging driver.

The ``check_*`` functions are the behaviour every transport must show; they
run here in-process and, in tests/integration/test_messaging_rabbit.py, over
both ``tether-inproc://`` and RabbitMQ.  The ``test_*`` functions below them
add what only the in-process driver promises (exact turn-taking, backlogs,
prompt shutdown, latency) and drive the driver's contract directly.
"""

from __future__ import annotations

import queue
import statistics
import subprocess
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import oslo_messaging
import pytest
from oslo_config import cfg

from tether.messaging import inproc
from tether.messaging import transport as tr
from tether.messaging.inproc import InProcessDriver

WAIT = 10.0  # seconds any expected delivery may take before the test fails


class VolumeBusy(Exception):
    """A domain error that callers allow back as itself (this module is in
    the transport's ``allowed_remote_exmods``)."""


class Endpoint:
    target = oslo_messaging.Target(version="1.1")

    def __init__(self, name: str) -> None:
        self.name = name
        self.got: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.release = threading.Event()

    def echo(self, ctxt: dict[str, Any], value: Any) -> dict[str, Any]:
        return {"server": self.name, "value": value, "user": ctxt.get("user")}

    def note(self, ctxt: dict[str, Any], value: Any) -> None:
        self.got.put((self.name, value))

    def stamp(self, ctxt: dict[str, Any]) -> None:
        self.got.put(time.perf_counter())

    @oslo_messaging.expected_exceptions(VolumeBusy)
    def busy(self, ctxt: dict[str, Any], volume_id: str) -> None:
        raise VolumeBusy(volume_id)

    def crash(self, ctxt: dict[str, Any]) -> None:
        raise subprocess.CalledProcessError(21, ["iscsiadm", "-m", "session"])

    def bad_size(self, ctxt: dict[str, Any], size: int) -> None:
        raise ValueError(f"size {size} is not a positive number of GiB")

    def unsendable(self, ctxt: dict[str, Any]) -> object:
        return object()

    def block(self, ctxt: dict[str, Any]) -> None:
        self.release.wait(WAIT)


class Notes:
    """A notification endpoint: ``info`` notifications land in ``got``."""

    def __init__(self, name: str = "",
                 got: queue.SimpleQueue[tuple[str, str, Any]] | None = None) -> None:
        self.name = name
        self.got: queue.SimpleQueue[tuple[str, str, Any]] = got or queue.SimpleQueue()

    def info(self, ctxt: dict[str, Any], publisher_id: str, event_type: str, payload: Any,
             metadata: Any) -> None:
        self.got.put((self.name, event_type, payload))


class Bus:
    """One process's messaging on ``url``: servers, clients, listeners."""

    def __init__(self, url: str) -> None:
        conf = cfg.ConfigOpts()
        self.url = url
        self.rpc = tr.rpc_transport(conf, url, allowed_remote_exmods=[__name__])
        self.notifications = tr.notification_transport(conf, url)
        self._servers: list[Any] = []

    def serve(self, topic: str, server: str, endpoint: object) -> Any:
        srv = tr.rpc_server(self.rpc, oslo_messaging.Target(topic=topic, server=server),
                            [endpoint])
        srv.start()
        self._servers.append(srv)
        return srv

    def client(self, topic: str, server: str | None = None, timeout: float = WAIT,
               fanout: bool = False) -> Any:
        target = oslo_messaging.Target(topic=topic, server=server, fanout=fanout,
                                       version="1.1")
        return oslo_messaging.get_rpc_client(self.rpc, target, timeout=timeout)

    def listen(self, topic: str, endpoint: object, pool: str | None = None) -> Any:
        listener = tr.notification_listener(
            self.notifications, [oslo_messaging.Target(topic=topic)], [endpoint], pool=pool)
        listener.start()
        self._servers.append(listener)
        return listener

    def notifier(self, topic: str) -> Any:
        return oslo_messaging.Notifier(self.notifications, publisher_id="volume.h1",
                                       driver="messaging", topics=[topic])

    def close(self) -> None:
        for srv in self._servers:
            srv.stop()
        for srv in self._servers:
            srv.wait()
        self.rpc.cleanup()
        self.notifications.cleanup()


def topic() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def inproc_url() -> str:
    return f"tether-inproc:///{uuid.uuid4().hex}"


# -- what every transport must do ------------------------------------------

def check_call_round_trip(bus: Bus) -> None:
    t = topic()
    bus.serve(t, "h1", Endpoint("h1"))
    got = bus.client(t, "h1").call({"user": "alice"}, "echo", value=[1, "x", {"k": None}])
    assert got == {"server": "h1", "value": [1, "x", {"k": None}], "user": "alice"}


def check_cast_delivered(bus: Bus) -> None:
    t, ep = topic(), Endpoint("h1")
    bus.serve(t, "h1", ep)
    assert bus.client(t, "h1").cast({}, "note", value=7) is None
    assert ep.got.get(timeout=WAIT) == ("h1", 7)


def check_server_targeting(bus: Bus) -> None:
    t = topic()
    bus.serve(t, "h1", Endpoint("h1"))
    bus.serve(t, "h2", Endpoint("h2"))
    for name in ("h2", "h1", "h2"):
        assert bus.client(t, name).call({}, "echo", value=0)["server"] == name


def check_fanout(bus: Bus) -> None:
    t, e1, e2 = topic(), Endpoint("h1"), Endpoint("h2")
    bus.serve(t, "h1", e1)
    bus.serve(t, "h2", e2)
    bus.client(t, fanout=True).cast({}, "note", value="all")
    assert e1.got.get(timeout=WAIT) == ("h1", "all")
    assert e2.got.get(timeout=WAIT) == ("h2", "all")


def check_topic_round_robin(bus: Bus) -> Counter[str]:
    t = topic()
    bus.serve(t, "h1", Endpoint("h1"))
    bus.serve(t, "h2", Endpoint("h2"))
    client = bus.client(t)
    served = Counter(client.call({}, "echo", value=i)["server"] for i in range(10))
    assert set(served) == {"h1", "h2"}, served
    return served


def check_remote_exceptions(bus: Bus) -> None:
    t = topic()
    bus.serve(t, "h1", Endpoint("h1"))
    client = bus.client(t, "h1")
    with pytest.raises(VolumeBusy) as allowed:  # an allowed module: the class itself
        client.call({}, "busy", volume_id="v-9")
    assert allowed.value.args[0] == "v-9"
    with pytest.raises(ValueError, match="size -1 is not a positive"):  # builtins too
        client.call({}, "bad_size", size=-1)
    with pytest.raises(oslo_messaging.RemoteError) as other:  # any other module
        client.call({}, "crash")
    assert other.value.exc_type == "CalledProcessError"
    assert "returned non-zero exit status 21" in other.value.value
    with pytest.raises(oslo_messaging.RemoteError) as missing:
        client.call({}, "no_such_method")
    assert missing.value.exc_type == "NoSuchMethod"


def check_call_timeout(bus: Bus) -> None:
    t, ep = topic(), Endpoint("h1")
    bus.serve(t, "h1", ep)
    start = time.monotonic()
    try:
        with pytest.raises(oslo_messaging.MessagingTimeout):
            bus.client(t, "h1", timeout=0.3).call({}, "block")
    finally:
        ep.release.set()
    assert 0.3 <= time.monotonic() - start < 0.3 + 2.0


def check_notifications(bus: Bus) -> None:
    t, notes = topic(), Notes()
    bus.listen(t, notes)
    bus.notifier(t).info({}, "volume.detach.end", {"volume_id": "v1"})
    assert notes.got.get(timeout=WAIT) == ("", "volume.detach.end", {"volume_id": "v1"})


def check_notification_pools(bus: Bus) -> Counter[str]:
    """The listeners without a pool get every notification, so does each pool;
    within a pool each notification goes to one member."""
    t, pool_a, pool_b = topic(), f"a-{topic()}", f"b-{topic()}"
    default, b, a_got = Notes("-"), Notes("b"), queue.SimpleQueue[tuple[str, str, Any]]()
    bus.listen(t, default)
    bus.listen(t, Notes("a1", a_got), pool=pool_a)
    bus.listen(t, Notes("a2", a_got), pool=pool_a)
    bus.listen(t, b, pool=pool_b)
    for i in range(4):
        bus.notifier(t).info({}, "volume.created", i)
    assert sorted(default.got.get(timeout=WAIT)[2] for _ in range(4)) == [0, 1, 2, 3]
    assert sorted(b.got.get(timeout=WAIT)[2] for _ in range(4)) == [0, 1, 2, 3]
    in_a = [a_got.get(timeout=WAIT) for _ in range(4)]
    assert sorted(payload for _, _, payload in in_a) == [0, 1, 2, 3]
    return Counter(name for name, _, _ in in_a)


SHARED_CHECKS = [check_call_round_trip, check_cast_delivered, check_server_targeting,
                 check_fanout, check_topic_round_robin, check_remote_exceptions,
                 check_call_timeout, check_notifications, check_notification_pools]


def measure_calls(bus: Bus, n: int = 200) -> tuple[float, float]:
    """(p50, p95) of ``n`` sequential calls, in milliseconds."""
    t = topic()
    bus.serve(t, "h1", Endpoint("h1"))
    client = bus.client(t, "h1")
    client.call({}, "echo", value=-1)  # warm: connections, worker threads
    samples = []
    for i in range(n):
        start = time.perf_counter()
        client.call({}, "echo", value=i)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples), statistics.quantiles(samples, n=20)[-1]


def measure_casts(bus: Bus, n: int = 200) -> float:
    """p50 from cast() to the handler running, in milliseconds."""
    t, ep = topic(), Endpoint("h1")
    bus.serve(t, "h1", ep)
    client = bus.client(t, "h1")
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        client.cast({}, "stamp")
        handled: float = ep.got.get(timeout=WAIT)
        samples.append((handled - start) * 1000)
    return statistics.median(samples)


# -- the in-process driver ------------------------------------------------

@pytest.fixture
def bus() -> Iterator[Bus]:
    b = Bus(inproc_url())
    try:
        yield b
    finally:
        b.close()


@pytest.mark.parametrize("check", SHARED_CHECKS, ids=lambda f: f.__name__[6:])
def test_shared_behaviour(bus: Bus, check: Callable[[Bus], object]) -> None:
    check(bus)


def test_topic_calls_take_turns(bus: Bus) -> None:
    assert check_topic_round_robin(bus) == {"h1": 5, "h2": 5}


def test_notification_pool_members_take_turns(bus: Bus) -> None:
    assert check_notification_pools(bus) == {"a1": 2, "a2": 2}


def test_what_json_cannot_carry_fails_at_once(bus: Bus) -> None:
    t = topic()
    bus.serve(t, "h1", Endpoint("h1"))
    with pytest.raises(ValueError, match=r"Cannot convert .* to primitive"):  # an argument
        bus.client(t, "h1").cast({}, "note", value=object())
    with pytest.raises(ValueError, match=r"Cannot convert .* to primitive"):  # a result
        bus.client(t, "h1").call({}, "unsendable")


def test_messages_wait_for_a_server_that_is_not_there(bus: Bus) -> None:
    t, early, late = topic(), Endpoint("h1"), Endpoint("h1")
    bus.client(t, "h1").cast({}, "note", value="before start")
    first = bus.serve(t, "h1", early)
    assert early.got.get(timeout=WAIT) == ("h1", "before start")
    first.stop()
    first.wait()
    bus.client(t, "h1").cast({}, "note", value="while stopped")
    bus.serve(t, "h1", late)
    assert late.got.get(timeout=WAIT) == ("h1", "while stopped")
    assert early.got.empty()


def test_a_backlog_keeps_the_newest(bus: Bus, monkeypatch: pytest.MonkeyPatch,
                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(inproc, "BACKLOG_LIMIT", 3)
    t, notes = topic(), Notes()
    for i in range(5):  # nobody listens yet
        bus.notifier(t).info({}, "volume.created", i)
    bus.listen(t, notes)
    assert [notes.got.get(timeout=WAIT)[2] for _ in range(3)] == [2, 3, 4]
    assert "dropped the oldest" in caplog.text


def test_two_transports_on_one_url_talk_and_other_urls_do_not() -> None:
    url = inproc_url()
    server_side, client_side, elsewhere = Bus(url), Bus(url), Bus(inproc_url())
    try:
        t = topic()
        server_side.serve(t, "h1", Endpoint("h1"))
        assert client_side.client(t, "h1").call({}, "echo", value=3)["value"] == 3
        with pytest.raises(oslo_messaging.MessagingTimeout):
            elsewhere.client(t, "h1", timeout=0.2).call({}, "echo", value=3)
    finally:
        for b in (server_side, client_side, elsewhere):
            b.close()


def test_stop_and_wait_return_promptly(bus: Bus) -> None:
    t = topic()
    srv = bus.serve(t, "h1", Endpoint("h1"))
    listener = bus.listen(t, Notes())
    client = bus.client(t, "h1")
    for i in range(20):  # several worker threads, all idle afterwards
        client.cast({}, "note", value=i)
    client.call({}, "echo", value=0)
    bus.notifier(t).info({}, "x", 1)
    start = time.monotonic()
    for s in (srv, listener):
        s.stop()
        s.wait()
    elapsed = time.monotonic() - start
    print(f"\nstop+wait of an RPC server and a notification listener: {elapsed * 1000:.1f} ms")
    assert elapsed < 0.25


def test_rpc_server_and_listener_do_not_warn(bus: Bus) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tr.rpc_server(bus.rpc, oslo_messaging.Target(topic=topic(), server="h1"), [])
        tr.notification_listener(bus.notifications, [oslo_messaging.Target(topic=topic())],
                                 [])
    assert [str(w.message) for w in caught] == []


def test_register_messaging_opts_is_idempotent() -> None:
    conf = cfg.ConfigOpts()
    tr.register_messaging_opts(conf)
    tr.register_messaging_opts(conf)
    conf([])
    assert conf.oslo_messaging_tracing.tracing_enabled is False
    assert conf.oslo_messaging_metrics.metrics_enabled is False
    assert conf.rpc_response_timeout == 60


def test_latency(bus: Bus) -> None:
    p50, p95 = measure_calls(bus)
    cast_p50 = measure_casts(bus)
    print(f"\ntether-inproc: call p50 {p50:.3f} ms, p95 {p95:.3f} ms; "
          f"cast to handler p50 {cast_p50:.3f} ms")
    assert p50 < 2.0
    assert cast_p50 < 2.0


# -- the driver contract, below oslo.messaging's servers --------------------

@pytest.fixture
def driver() -> InProcessDriver:
    conf = cfg.ConfigOpts()
    return InProcessDriver(conf, oslo_messaging.TransportURL.parse(conf, inproc_url()),
                           "tether")


@contextmanager
def running(listener: Any, handle: Callable[[Any], object]) -> Iterator[None]:
    """``listener`` handing each message to ``handle`` on its own thread."""
    listener.start(lambda incoming: handle(incoming[0]))
    try:
        yield
    finally:
        listener.stop()
        listener.cleanup()


def call_raw(driver: InProcessDriver, t: str, handle: Callable[[Any], object],
             monitor: float) -> Any:
    target = oslo_messaging.Target(topic=t, server="h1")
    with running(driver.listen(target, 1, None), handle):
        return driver.send(target, {}, {"method": "m"}, wait_for_reply=True, timeout=WAIT,
                           call_monitor_timeout=monitor)


def test_heartbeats_keep_a_long_call_alive(driver: InProcessDriver) -> None:
    def handle(msg: Any) -> None:
        assert msg.client_timeout == 0.3
        for _ in range(4):  # a handler that works for 0.6 s, beating every 0.15 s
            time.sleep(0.15)
            msg.heartbeat()
        msg.reply({"done": True})

    start = time.monotonic()
    assert call_raw(driver, topic(), handle, monitor=0.3) == {"done": True}
    assert time.monotonic() - start >= 0.6


def test_a_silent_handler_times_out_on_the_monitor(driver: InProcessDriver) -> None:
    start = time.monotonic()
    with pytest.raises(oslo_messaging.MessagingTimeout, match=r"no heartbeat for 0\.2s"):
        call_raw(driver, topic(), lambda msg: None, monitor=0.2)  # takes it, never answers
    assert time.monotonic() - start < 2.0


def test_requeued_notification_comes_back(driver: InProcessDriver) -> None:
    t, seen = topic(), queue.SimpleQueue[int]()

    def handle(msg: Any) -> None:
        seen.put(msg.message["n"])
        if seen.qsize() == 1:
            msg.requeue()

    listener = driver.listen_for_notifications([(oslo_messaging.Target(topic=t), "info")],
                                               None, 1, None)
    with running(listener, handle):
        driver.send_notification(oslo_messaging.Target(topic=f"{t}.info"), {}, {"n": 5}, 1.0)
        assert [seen.get(timeout=WAIT), seen.get(timeout=WAIT)] == [5, 5]


def test_the_pool_starts_a_thread_only_when_every_worker_is_busy() -> None:
    pool = tr.PromptThreadPool(max_workers=8)
    try:
        for _ in range(20):  # one message at a time: one worker does them all
            pool.submit(lambda: None).result(timeout=5)
        assert pool.num_workers == 1
        release = threading.Event()
        started = queue.SimpleQueue[int]()

        def hold(n: int) -> None:
            started.put(n)
            release.wait(5)

        # three at once, queued faster than a worker can pick one up: each
        # gets a thread of its own, none waits behind a held one
        held = [pool.submit(hold, n) for n in range(3)]
        assert sorted(started.get(timeout=5) for _ in range(3)) == [0, 1, 2]
        assert pool.num_workers == 3
        release.set()
        for f in held:
            f.result(timeout=5)
        deadline = time.monotonic() + 5
        while pool.get_num_idle_workers() < 3:  # they go back to waiting
            assert time.monotonic() < deadline
            time.sleep(0.01)
        pool.submit(lambda: None).result(timeout=5)
        assert pool.num_workers == 3
    finally:
        pool.shutdown(wait=True)
