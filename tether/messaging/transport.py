"""Building oslo.messaging transports and servers on a private ConfigOpts."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from typing import Any

import oslo_messaging
from oslo_config import cfg
from oslo_messaging import opts as om_opts


def register_messaging_opts(conf: cfg.ConfigOpts) -> None:
    """oslo.messaging registers some option groups only on the global
    ``cfg.CONF``; a private ConfigOpts needs them all.  Idempotent."""
    from oslo_messaging._metrics import client as metrics
    from oslo_messaging._tracing import client as tracing

    groups: list[tuple[str | None, Sequence[cfg.Opt]]] = list(om_opts.list_opts())
    groups.append(("oslo_messaging_tracing", tracing.oslo_messaging_tracing))
    groups.append(("oslo_messaging_metrics", metrics.oslo_messaging_metrics))
    for group, opts in groups:
        for opt in opts:
            with contextlib.suppress(cfg.DuplicateOptError):
                conf.register_opt(opt, group=group)


def rpc_transport(conf: cfg.ConfigOpts, url: str,
                  allowed_remote_exmods: Sequence[str] = ()) -> Any:
    register_messaging_opts(conf)
    return oslo_messaging.get_rpc_transport(conf, url=url,
                                            allowed_remote_exmods=list(allowed_remote_exmods))


def notification_transport(conf: cfg.ConfigOpts, url: str) -> Any:
    register_messaging_opts(conf)
    return oslo_messaging.get_notification_transport(conf, url=url)


def rpc_server(transport: Any, target: oslo_messaging.Target, endpoints: list[object],
               serializer: Any = None) -> Any:
    """A threading RPC server (the only executor oslo.messaging keeps)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return oslo_messaging.get_rpc_server(transport, target, endpoints,
                                             executor="threading", serializer=serializer)
