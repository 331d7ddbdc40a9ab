"""oslo.messaging transports, RPC servers and notification listeners on a
private :class:`cfg.ConfigOpts`, for ``tether-inproc://`` and ``rabbit://``
alike.

Three things oslo.messaging 18.3.1 does not do by itself:

* it registers its tracing and metrics options only on the global
  ``cfg.CONF``, so a private ConfigOpts fails with NoSuchOptError
  (:func:`register_messaging_opts`);
* passing ``executor=`` to a server warns that the argument is deprecated;
  left out, the threading executor is chosen (unless eventlet has patched
  ``threading``), so the helpers here never pass it;
* the threading executor's idle workers look for the shutdown flag only once
  a second, so every ``server.wait()`` took up to a second; and it starts a
  thread per message until it has 64; the servers built here use
  :class:`PromptThreadPool`, which wakes them and starts threads only when
  all are busy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import futurist
import oslo_messaging
from futurist import _utils as futurist_utils
from oslo_config import cfg
from oslo_messaging import opts as om_opts


def register_messaging_opts(conf: cfg.ConfigOpts) -> None:
    """Every option oslo.messaging reads, on ``conf``.  Idempotent."""
    from oslo_messaging._metrics import client as metrics
    from oslo_messaging._tracing import client as tracing

    groups: list[tuple[str | None, Sequence[cfg.Opt]]] = list(om_opts.list_opts())
    groups.append(("oslo_messaging_tracing", tracing.oslo_messaging_tracing))
    groups.append(("oslo_messaging_metrics", metrics.oslo_messaging_metrics))
    for group, opts in groups:
        for opt in opts:
            # an equal option registers as a no-op; only a clash raises
            with contextlib.suppress(cfg.DuplicateOptError):
                conf.register_opt(opt, group=group)


def rpc_transport(conf: cfg.ConfigOpts, url: str,
                  allowed_remote_exmods: Sequence[str] = ()) -> Any:
    """An RPC transport; exceptions raised by a server in a module named in
    ``allowed_remote_exmods`` come back to callers as themselves (any other
    as ``oslo_messaging.RemoteError``)."""
    register_messaging_opts(conf)
    return oslo_messaging.get_rpc_transport(
        conf, url=url, allowed_remote_exmods=list(allowed_remote_exmods))


def notification_transport(conf: cfg.ConfigOpts, url: str) -> Any:
    register_messaging_opts(conf)
    return oslo_messaging.get_notification_transport(conf, url=url)


def rpc_server(transport: Any, target: oslo_messaging.Target, endpoints: Sequence[object],
               serializer: Any = None) -> Any:
    """A threading RPC server on ``target`` (topic and server); not started."""
    server = oslo_messaging.get_rpc_server(transport, target, list(endpoints),
                                           serializer=serializer)
    return _prompt(server)


def notification_listener(transport: Any, targets: Sequence[oslo_messaging.Target],
                          endpoints: Sequence[object], pool: str | None = None,
                          serializer: Any = None) -> Any:
    """A threading notification listener (endpoint methods are named after
    priorities: ``info(ctxt, publisher_id, event_type, payload, metadata)``);
    not started.  Listeners with the same ``pool`` share one copy of each
    notification; every pool, and the listeners without one, get a copy."""
    listener = oslo_messaging.get_notification_listener(
        transport, list(targets), list(endpoints), serializer=serializer, pool=pool)
    return _prompt(listener)


class PromptThreadPool(futurist.ThreadPoolExecutor):
    """futurist's pool, with two changes:

    * a new worker only when no idle one is left for the new message:
      futurist starts one per message until ``max_workers`` (64), so a fresh
      service paid a thread start on each of its first 64 messages per
      server and then kept 64 threads, each waking once a second to look
      for the shutdown flag (idle CPU, and a new job lands on the coldest
      thread);
    * ``shutdown(wait=True)`` returns as soon as the work in hand is done:
      idle workers are woken instead of noticing the shutdown at their next
      one-second poll.
    """

    def _maybe_spin_up(self) -> bool:
        # called by submit() under the shutdown lock, before the message is
        # queued: the workers waiting must outnumber the messages waiting
        idle = sum(1 for w in self._workers if w.idle)
        if idle > self._work_queue.qsize():
            return False
        return bool(super()._maybe_spin_up())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if wait:
            self._work_queue.join()  # the work in hand finishes first
        super().shutdown(wait=False, cancel_futures=cancel_futures)
        for _ in self._workers:
            self._work_queue.put(futurist_utils.WorkItem(futures.Future(), _nothing))
        if wait:
            for worker in self._workers:
                worker.join()


def _nothing() -> None:
    return None


def _prompt(server: Any) -> Any:
    # MessageHandlingServer builds its pool from ``_executor_cls`` at start()
    executor_cls: Callable[..., Any] | None = getattr(server, "_executor_cls", None)
    if executor_cls is futurist.ThreadPoolExecutor:
        server._executor_cls = PromptThreadPool
    return server
