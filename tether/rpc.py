"""RPC between Tether's processes, on oslo.messaging.

Topics: ``tether-volume`` (server = the volume service's host) and
``tether-compute`` (server = the compute host).  The caller's
:class:`RequestContext` travels with every message; domain errors raised by a
service (``tether.exceptions``) come back to the caller as the same class.
In ``tether serve`` the transport is ``tether-inproc://``; in the distributed
mode it is RabbitMQ.  Nothing else differs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import oslo_messaging as messaging
from oslo_config import cfg

from tether.context import RequestContext
from tether.messaging import transport as tr

LOG = logging.getLogger(__name__)

VOLUME_TOPIC = "tether-volume"
COMPUTE_TOPIC = "tether-compute"
ALLOWED_EXMODS = ["tether.exceptions", "tether.virt.driver"]


class ContextSerializer(messaging.NoOpSerializer):  # type: ignore[misc]
    def serialize_context(self, ctxt: RequestContext | dict[str, Any]) -> dict[str, Any]:
        if isinstance(ctxt, RequestContext):
            return ctxt.to_dict()
        return dict(ctxt)

    def deserialize_context(self, ctxt: dict[str, Any]) -> RequestContext:
        return RequestContext.from_dict(ctxt)


class Rpc:
    """One process's messaging: its transport and the clients/servers on it."""

    def __init__(self, conf: cfg.ConfigOpts, url: str | None = None) -> None:
        tr.register_messaging_opts(conf)
        self.url = url or conf.transport_url
        self.transport = tr.rpc_transport(conf, self.url, allowed_remote_exmods=ALLOWED_EXMODS)
        self._servers: list[Any] = []
        self._clients: dict[tuple[str, str, float], RpcClient] = {}

    def client(self, topic: str, server: str, timeout: float = 120.0) -> RpcClient:
        key = (topic, server, timeout)
        client = self._clients.get(key)
        if client is None:
            target = messaging.Target(topic=topic, server=server, version="1.0")
            raw = messaging.get_rpc_client(self.transport, target,
                                           serializer=ContextSerializer(), timeout=timeout)
            client = self._clients[key] = RpcClient(raw)
        return client

    def serve(self, topic: str, server: str, endpoints: Sequence[object]) -> None:
        target = messaging.Target(topic=topic, server=server)
        srv = tr.rpc_server(self.transport, target, list(endpoints),
                            serializer=ContextSerializer())
        srv.start()
        self._servers.append(srv)

    def stop(self) -> None:
        """Stop consuming, then wait for the messages in hand."""
        for srv in self._servers:
            srv.stop()
        for srv in self._servers:
            srv.wait()
        self._servers.clear()
        self.transport.cleanup()


class RpcClient:
    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def call(self, ctx: RequestContext, method: str, **kwargs: Any) -> Any:
        return self._raw.call(ctx, method, **kwargs)

    def cast(self, ctx: RequestContext, method: str, **kwargs: Any) -> None:
        self._raw.cast(ctx, method, **kwargs)
