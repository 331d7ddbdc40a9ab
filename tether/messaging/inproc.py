"""An oslo.messaging driver for one process: ``tether-inproc://[name]``.

oslo.messaging's own ``fake://`` driver polls its queues with sleeps of up
to 50 ms, so every RPC costs tens of milliseconds; a whole volume detach is
about 65 ms of real work.  This driver hands each message straight to a
waiting consumer through blocking queues, with RabbitMQ's semantics as
oslo.messaging uses them:

* RPC: a queue per (topic, server) and a shared queue per topic whose
  consumers take turns; fanout reaches every server of a topic; calls get
  their reply (or the remote exception, serialised the way the AMQP drivers
  do) on a private queue, or MessagingTimeout.
* notifications: one queue per (topic.priority, pool); every pool gets a
  copy, consumers of a pool take turns.
* messages sent before anyone listens wait in their queue.

Messages cross as JSON (as on a wire), so no object is shared between
sender and receiver.  Transports built for the same URL share one broker.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
from collections import deque
from typing import Any

import oslo_messaging
from oslo_messaging._drivers import base
from oslo_messaging._drivers import common as rpc_common
from oslo_serialization import jsonutils

_STOP = object()


class _Queue:
    """A named queue: a backlog until consumers come, then round-robin."""

    def __init__(self) -> None:
        self.backlog: deque[Any] = deque()
        self.consumers: list[queue.SimpleQueue[Any]] = []
        self._turn = itertools.count()

    def put(self, item: Any) -> None:
        if self.consumers:
            self.consumers[next(self._turn) % len(self.consumers)].put(item)
        else:
            self.backlog.append(item)

    def subscribe(self, inbox: queue.SimpleQueue[Any]) -> None:
        self.consumers.append(inbox)
        while self.backlog:
            inbox.put(self.backlog.popleft())

    def unsubscribe(self, inbox: queue.SimpleQueue[Any]) -> None:
        if inbox in self.consumers:
            self.consumers.remove(inbox)


class Broker:
    """All queues of one virtual host."""

    _brokers: dict[str, Broker] = {}
    _brokers_lock = threading.Lock()

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queues: dict[tuple[str, ...], _Queue] = {}

    @classmethod
    def named(cls, name: str) -> Broker:
        with cls._brokers_lock:
            return cls._brokers.setdefault(name, cls())

    def _queue(self, key: tuple[str, ...]) -> _Queue:
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = _Queue()
        return q

    def subscribe(self, keys: list[tuple[str, ...]], inbox: queue.SimpleQueue[Any]) -> None:
        with self.lock:
            for key in keys:
                self._queue(key).subscribe(inbox)

    def unsubscribe(self, keys: list[tuple[str, ...]], inbox: queue.SimpleQueue[Any]) -> None:
        with self.lock:
            for key in keys:
                self._queue(key).unsubscribe(inbox)

    def publish_rpc(self, exchange: str, target: oslo_messaging.Target, item: Any) -> None:
        with self.lock:
            if target.fanout:
                for key, q in self.queues.items():
                    if key[:3] == ("server", exchange, target.topic):
                        q.put(item)
            elif target.server:
                self._queue(("server", exchange, target.topic, target.server)).put(item)
            else:
                self._queue(("topic", exchange, target.topic)).put(item)

    def publish_notification(self, exchange: str, topic: str, item: Any) -> None:
        with self.lock:
            pools = [q for key, q in self.queues.items()
                     if key[:3] == ("notify", exchange, topic)]
            if not pools:
                pools = [self._queue(("notify", exchange, topic, ""))]
            for q in pools:
                q.put(item)


class _Incoming(base.RpcIncomingMessage):  # type: ignore[misc]
    def __init__(self, ctxt: dict[str, Any], message: dict[str, Any],
                 reply_q: queue.SimpleQueue[Any] | None, requeue: Any) -> None:
        super().__init__(ctxt, message)
        self._reply_q = reply_q
        self._requeue = requeue

    def reply(self, reply: Any = None, failure: Any = None) -> None:
        if self._reply_q is None:
            return
        if failure is not None:
            self._reply_q.put((None, rpc_common.serialize_remote_exception(failure)))
        else:
            self._reply_q.put((_wire(reply), None))

    def acknowledge(self) -> None:
        pass

    def requeue(self) -> None:
        self._requeue()

    def heartbeat(self) -> None:
        pass


class _Listener(base.PollStyleListener):  # type: ignore[misc]
    def __init__(self, broker: Broker, keys: list[tuple[str, ...]]) -> None:
        super().__init__()
        self._broker = broker
        self._keys = keys
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stopped = threading.Event()
        broker.subscribe(keys, self._inbox)

    @base.batch_poll_helper  # type: ignore[untyped-decorator]
    def poll(self, timeout: float | None = None) -> _Incoming | None:
        if self._stopped.is_set():
            try:  # drain what was already delivered, never block once stopped
                item = self._inbox.get_nowait()
            except queue.Empty:
                return None
        else:
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                return None
        if item is _STOP:
            return None
        return _Incoming(*item)

    def stop(self) -> None:
        self._stopped.set()
        self._inbox.put(_STOP)

    def cleanup(self) -> None:
        self._broker.unsubscribe(self._keys, self._inbox)


def _wire(value: Any) -> Any:
    """What the other side of a wire would get: a JSON copy."""
    return json.loads(jsonutils.dumps(value))


class InProcessDriver(base.BaseDriver):  # type: ignore[misc]
    def __init__(self, conf: Any, url: Any, default_exchange: str | None = None,
                 allowed_remote_exmods: list[str] | None = None) -> None:
        super().__init__(conf, url, default_exchange, allowed_remote_exmods)
        self._broker = Broker.named(url.virtual_host or "")
        self._exchange = default_exchange or "tether"

    def require_features(self, requeue: bool = True) -> None:
        pass

    def send(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
             message: dict[str, Any], wait_for_reply: bool | None = None,
             timeout: float | None = None, call_monitor_timeout: float | None = None,
             retry: int | None = None, transport_options: Any = None) -> Any:
        reply_q: queue.SimpleQueue[Any] | None = queue.SimpleQueue() if wait_for_reply else None
        exchange = target.exchange or self._exchange
        wire_ctxt, wire_msg = _wire(ctxt), _wire(message)

        def deliver() -> None:
            self._broker.publish_rpc(exchange, target,
                                     (wire_ctxt, wire_msg, reply_q, deliver))

        deliver()
        if reply_q is None:
            return None
        try:
            reply, failure = reply_q.get(timeout=timeout)
        except queue.Empty:
            raise oslo_messaging.MessagingTimeout(
                f"No reply on topic {target.topic} within {timeout}s") from None
        if failure is not None:
            raise rpc_common.deserialize_remote_exception(failure, self._allowed_remote_exmods)
        return reply

    def send_notification(self, target: oslo_messaging.Target, ctxt: dict[str, Any],
                          message: dict[str, Any], version: float,
                          retry: int | None = None) -> None:
        item = (_wire(ctxt), _wire(message), None, lambda: None)
        self._broker.publish_notification(target.exchange or self._exchange, target.topic,
                                          item)

    def listen(self, target: oslo_messaging.Target, batch_size: int,
               batch_timeout: float | None) -> base.PollStyleListenerAdapter:
        exchange = target.exchange or self._exchange
        keys = [("server", exchange, target.topic, target.server or ""),
                ("topic", exchange, target.topic)]
        return base.PollStyleListenerAdapter(_Listener(self._broker, keys), batch_size,
                                             batch_timeout)

    def listen_for_notifications(self, targets_and_priorities: list[tuple[Any, str]],
                                 pool: str | None, batch_size: int,
                                 batch_timeout: float | None
                                 ) -> base.PollStyleListenerAdapter:
        keys: list[tuple[str, ...]] = [
            ("notify", target.exchange or self._exchange, f"{target.topic}.{priority}",
                 pool or "") for target, priority in targets_and_priorities]
        return base.PollStyleListenerAdapter(_Listener(self._broker, keys), batch_size,
                                             batch_timeout)

    def cleanup(self) -> None:
        pass
