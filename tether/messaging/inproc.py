"""An oslo.messaging driver for one process: ``tether-inproc://[name][/vhost]``.

oslo.messaging's own ``fake://`` driver polls its queues with sleeps of up
to 50 ms, so every RPC costs tens of milliseconds, while a whole volume
detach is about 65 ms of real work.  This driver hands each message to a
consumer blocked on a queue, with RabbitMQ's semantics as oslo.messaging's
AMQP driver uses them:

* RPC: a shared queue per topic (its consumers take turns), a queue per
  (topic, server), and fanout to every listener of a topic; a call gets its
  reply, the remote exception (serialised as the AMQP drivers do), or
  MessagingTimeout, honouring call-monitor heartbeats.
* notifications: the default queue of ``topic.priority`` gets every message
  and so does the queue of each listener pool; a pool's consumers take turns.
* RPC and notification messages sent before anyone consumes wait in their
  queue (at most ``BACKLOG_LIMIT`` each, oldest dropped); fanout is not kept.

Messages cross as JSON, as on a wire, so sender and receiver never share an
object.  Transports built for the same URL (host part and virtual host) share
one broker, as two processes on one RabbitMQ vhost do.
"""

from __future__ import annotations

import itertools
import json
import logging
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import oslo_messaging
from oslo_messaging._drivers import base
from oslo_messaging._drivers import common as rpc_common
from oslo_serialization import jsonutils

LOG = logging.getLogger(__name__)

BACKLOG_LIMIT = 10_000
"""Messages a queue keeps while nobody consumes it (a long-running embedded
process must not grow without bound on notifications nobody listens to)."""

_RESULT, _FAILURE, _HEARTBEAT = "result", "failure", "heartbeat"
_STOP = object()

Reply = queue.SimpleQueue[tuple[str, Any]]
Inbox = queue.SimpleQueue[Any]


def _wire(value: Any) -> Any:
    """What the other end of a wire would get: a JSON copy (raises TypeError
    or ValueError for what the AMQP drivers could not send either)."""
    return json.loads(jsonutils.dumps(value))


@dataclass(frozen=True, slots=True)
class _Envelope:
    ctxt: dict[str, Any]
    message: dict[str, Any]
    reply: Reply | None = None
    client_timeout: float | None = None


class _Queue:
    """A named queue: its consumers take turns; without any, a backlog."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.backlog: deque[_Envelope] = deque()
        self.consumers: list[Inbox] = []
        self._turn = itertools.count()

    def put(self, envelope: _Envelope) -> None:
        if self.consumers:
            inbox = self.consumers[next(self._turn) % len(self.consumers)]
            inbox.put((envelope, self))
            return
        if len(self.backlog) >= BACKLOG_LIMIT:
            self.backlog.popleft()
            LOG.warning("Queue %s has no consumer and %d messages waiting: dropped the "
                        "oldest; start a listener on it or stop sending to it",
                        self.name, BACKLOG_LIMIT)
        self.backlog.append(envelope)

    def subscribe(self, inbox: Inbox) -> None:
        self.consumers.append(inbox)
        while self.backlog:
            inbox.put((self.backlog.popleft(), self))

    def unsubscribe(self, inbox: Inbox) -> None:
        if inbox in self.consumers:
            self.consumers.remove(inbox)


@dataclass(frozen=True)
class _Subscription:
    """What one listener consumes: named queues and fanout topics."""

    queues: tuple[tuple[str, ...], ...]
    fanout: tuple[tuple[str, ...], ...] = ()


class Broker:
    """Every queue of one URL; shared by the transports built for that URL."""

    _brokers: dict[str, Broker] = {}
    _brokers_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[tuple[str, ...], _Queue] = {}
        self._fanout: dict[tuple[str, ...], list[Inbox]] = {}

    @classmethod
    def for_url(cls, url: oslo_messaging.TransportURL) -> Broker:
        hosts = ",".join(f"{h.hostname or ''}:{h.port or ''}" for h in url.hosts)
        name = f"{hosts}/{url.virtual_host or ''}"
        with cls._brokers_lock:
            return cls._brokers.setdefault(name, cls())

    def _queue(self, key: tuple[str, ...]) -> _Queue:
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue("/".join(key))
        return q

    def subscribe(self, sub: _Subscription, inbox: Inbox) -> None:
        with self._lock:
            for key in sub.queues:
                self._queue(key).subscribe(inbox)
            for key in sub.fanout:
                self._fanout.setdefault(key, []).append(inbox)

    def unsubscribe(self, sub: _Subscription, inbox: Inbox) -> None:
        with self._lock:
            for key in sub.queues:
                self._queue(key).unsubscribe(inbox)
            for key in sub.fanout:
                inboxes = self._fanout.get(key, [])
                if inbox in inboxes:
                    inboxes.remove(inbox)

    def put(self, key: tuple[str, ...], envelope: _Envelope) -> None:
        with self._lock:
            self._queue(key).put(envelope)

    def requeue(self, source: _Queue, envelope: _Envelope) -> None:
        with self._lock:
            source.put(envelope)

    def fanout(self, key: tuple[str, ...], envelope: _Envelope) -> None:
        with self._lock:
            for inbox in self._fanout.get(key, []):
                inbox.put((envelope, None))

    def notify(self, exchange: str, topic: str, envelope: _Envelope) -> None:
        """The default queue of ``topic`` and every pool's queue get a copy."""
        with self._lock:
            self._queue(("notify", exchange, topic, "")).put(envelope)
            for key, q in self._queues.items():
                if key[:3] == ("notify", exchange, topic) and key[3]:
                    q.put(envelope)


class _Incoming(base.RpcIncomingMessage):  # type: ignore[misc]
    def __init__(self, broker: Broker, envelope: _Envelope, source: _Queue | None) -> None:
        super().__init__(envelope.ctxt, envelope.message)
        self.client_timeout = envelope.client_timeout
        self._broker = broker
        self._envelope = envelope
        self._source = source

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        channel = self._envelope.reply
        if channel is None:  # a cast: nobody waits
            return
        if failure is None:
            try:
                channel.put((_RESULT, _wire(reply)))
                return
            except (TypeError, ValueError):
                # the AMQP drivers would fail to send and leave the caller to
                # time out; tell the caller at once instead
                failure = sys.exc_info()
        channel.put((_FAILURE, rpc_common.serialize_remote_exception(failure)))

    def heartbeat(self) -> None:
        if self._envelope.reply is not None:
            self._envelope.reply.put((_HEARTBEAT, None))

    def acknowledge(self) -> None:
        pass

    def requeue(self) -> None:
        if self._source is not None:
            self._broker.requeue(self._source, self._envelope)


class _Listener(base.PollStyleListener):  # type: ignore[misc]
    """Blocks on its own inbox; the broker puts each message it is due there."""

    def __init__(self, broker: Broker, sub: _Subscription) -> None:
        super().__init__()
        self._broker = broker
        self._sub = sub
        self._inbox: Inbox = queue.SimpleQueue()
        self._stopped = threading.Event()
        broker.subscribe(sub, self._inbox)

    @base.batch_poll_helper  # type: ignore[untyped-decorator]
    def poll(self, timeout: float | None = None) -> _Incoming | None:
        try:
            if self._stopped.is_set():  # hand over what already came, never block
                item = self._inbox.get_nowait()
            else:
                item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _STOP:
            return None
        envelope, source = item
        return _Incoming(self._broker, envelope, source)

    def stop(self) -> None:
        # unsubscribe first, so that nothing lands behind the stop marker
        self._broker.unsubscribe(self._sub, self._inbox)
        self._stopped.set()
        self._inbox.put(_STOP)

    def cleanup(self) -> None:
        self._broker.unsubscribe(self._sub, self._inbox)


class InProcessDriver(base.BaseDriver):  # type: ignore[misc]
    """The ``tether-inproc`` transport driver (see the module docstring)."""

    def __init__(self, conf: Any, url: oslo_messaging.TransportURL,
                 default_exchange: str | None = None,
                 allowed_remote_exmods: list[str] | None = None) -> None:
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        self._broker = Broker.for_url(url)

    def _exchange(self, target: oslo_messaging.Target) -> str:
        return str(target.exchange or self._default_exchange or "openstack")

    def require_features(self, requeue: bool = False) -> None:
        """Requeue is supported; nothing else is asked of drivers."""

    def send(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
             message: dict[str, Any], wait_for_reply: bool | None = None,
             timeout: float | None = None, call_monitor_timeout: float | None = None,
             retry: int | None = None, transport_options: Any = None) -> Any:
        channel: Reply | None = queue.SimpleQueue() if wait_for_reply else None
        envelope = _Envelope(_wire(ctxt), _wire(message), channel,
                             call_monitor_timeout if channel is not None else None)
        exchange = self._exchange(target)
        if target.fanout:
            self._broker.fanout(("fanout", target.topic), envelope)
        elif target.server:
            self._broker.put(("rpc", exchange, f"{target.topic}.{target.server}"), envelope)
        else:
            self._broker.put(("rpc", exchange, target.topic), envelope)
        if channel is None:
            return None
        return self._await_reply(channel, target, message, timeout, call_monitor_timeout)

    def _await_reply(self, channel: Reply, target: oslo_messaging.Target,
                     message: dict[str, Any], timeout: float | None,
                     monitor: float | None) -> Any:
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        monitor_deadline = None if monitor is None else now + monitor
        while True:
            ends = [d for d in (deadline, monitor_deadline) if d is not None]
            wait = max(0.0, min(ends) - time.monotonic()) if ends else None
            try:
                kind, body = channel.get(timeout=wait)
            except queue.Empty:
                where = f"topic {target.topic!r}" + (
                    f" server {target.server!r}" if target.server else "")
                silent = "" if monitor_deadline is None or min(ends) == deadline else (
                    f" (no heartbeat for {monitor}s)")
                raise oslo_messaging.MessagingTimeout(
                    f"No reply to {message.get('method')!r} on {where} within {timeout}s"
                    f"{silent}: is a server listening there, and is its handler "
                    "still running?") from None
            if kind == _HEARTBEAT:
                if monitor is not None:
                    monitor_deadline = time.monotonic() + monitor
                continue
            if kind == _FAILURE:
                raise rpc_common.deserialize_remote_exception(
                    body, self._allowed_remote_exmods)
            return body

    def send_notification(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
                          message: dict[str, Any], version: float,
                          retry: int | None = None) -> None:
        self._broker.notify(self._exchange(target), target.topic,
                            _Envelope(_wire(ctxt), _wire(message)))

    def listen(self, target: oslo_messaging.Target, batch_size: int,
               batch_timeout: float | None) -> base.PollStyleListenerAdapter:
        exchange = self._exchange(target)
        sub = _Subscription(
            queues=(("rpc", exchange, target.topic),
                    ("rpc", exchange, f"{target.topic}.{target.server}")),
            fanout=(("fanout", target.topic),))
        return base.PollStyleListenerAdapter(_Listener(self._broker, sub), batch_size,
                                             batch_timeout)

    def listen_for_notifications(self, targets_and_priorities: list[tuple[Any, str]],
                                 pool: str | None, batch_size: int,
                                 batch_timeout: float | None
                                 ) -> base.PollStyleListenerAdapter:
        sub = _Subscription(queues=tuple(
            ("notify", self._exchange(target), f"{target.topic}.{priority}", pool or "")
            for target, priority in targets_and_priorities))
        return base.PollStyleListenerAdapter(_Listener(self._broker, sub), batch_size,
                                             batch_timeout)

    def cleanup(self) -> None:
        """Nothing to release: the broker outlives transports, as RabbitMQ does."""
