"""Typed client and server endpoint of the volume service's RPC interface
(topic ``tether-volume``, one server per storage host)."""

from __future__ import annotations

from typing import Any

import oslo_messaging as messaging

from tether.connection import ConnectionInfo
from tether.context import RequestContext
from tether.rpc import VOLUME_TOPIC, Rpc
from tether.volume.manager import VolumeManager


class VolumeRpcApi:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc

    def create_volume(self, ctx: RequestContext, host: str, volume_id: str) -> None:
        self._rpc.client(VOLUME_TOPIC, host).cast(ctx, "create_volume", volume_id=volume_id)

    def delete_volume(self, ctx: RequestContext, host: str, volume_id: str) -> None:
        self._rpc.client(VOLUME_TOPIC, host).cast(ctx, "delete_volume", volume_id=volume_id)

    def sync_export(self, ctx: RequestContext, host: str, volume_id: str
                    ) -> ConnectionInfo | None:
        """Make the target's ACL match the live attachments; the connection
        info when the volume stays exported."""
        data = self._rpc.client(VOLUME_TOPIC, host, timeout=60).call(
            ctx, "sync_export", volume_id=volume_id)
        return None if data is None else ConnectionInfo.from_dict(data)

    def connection_info(self, ctx: RequestContext, host: str, volume_id: str
                        ) -> ConnectionInfo:
        """Where the volume's export is, without touching the target."""
        data = self._rpc.client(VOLUME_TOPIC, host, timeout=60).call(
            ctx, "connection_info", volume_id=volume_id)
        return ConnectionInfo.from_dict(data)


class VolumeEndpoint:
    """oslo.messaging endpoint: unpacks messages into VolumeManager calls."""

    target = messaging.Target(version="1.0")

    def __init__(self, manager: VolumeManager) -> None:
        self.manager = manager

    def create_volume(self, ctx: RequestContext, volume_id: str) -> None:
        self.manager.create_volume(volume_id)

    def delete_volume(self, ctx: RequestContext, volume_id: str) -> None:
        self.manager.delete_volume(volume_id)

    def sync_export(self, ctx: RequestContext, volume_id: str) -> dict[str, Any] | None:
        info = self.manager.sync_export(volume_id)
        return None if info is None else info.to_dict(with_secret=True)

    def connection_info(self, ctx: RequestContext, volume_id: str) -> dict[str, Any]:
        return self.manager.connection_info(volume_id).to_dict(with_secret=True)
