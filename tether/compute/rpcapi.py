"""Typed client of the compute service's RPC interface (topic
``tether-compute``, one server per hypervisor host).  All casts: the API
answers 202 and the operation's progress is its instance action."""

from __future__ import annotations

from tether.context import RequestContext
from tether.rpc import COMPUTE_TOPIC, Rpc


class ComputeRpcApi:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc

    def _cast(self, ctx: RequestContext, host: str, method: str, **kwargs: object) -> None:
        self._rpc.client(COMPUTE_TOPIC, host).cast(ctx, method, **kwargs)

    def build_instance(self, ctx: RequestContext, host: str, instance_uuid: str,
                       action_id: int) -> None:
        self._cast(ctx, host, "build_instance", instance_uuid=instance_uuid,
                   action_id=action_id)

    def terminate_instance(self, ctx: RequestContext, host: str, instance_uuid: str,
                           action_id: int) -> None:
        self._cast(ctx, host, "terminate_instance", instance_uuid=instance_uuid,
                   action_id=action_id)

    def power_action(self, ctx: RequestContext, host: str, instance_uuid: str, event: str,
                     action_id: int) -> None:
        self._cast(ctx, host, "power_action", instance_uuid=instance_uuid, event=event,
                   action_id=action_id)

    def shelve_action(self, ctx: RequestContext, host: str, instance_uuid: str, event: str,
                      action_id: int) -> None:
        """``shelve``, ``shelve_offload`` or ``unshelve``."""
        self._cast(ctx, host, "shelve_action", instance_uuid=instance_uuid, event=event,
                   action_id=action_id)

    def attach_volume(self, ctx: RequestContext, host: str, instance_uuid: str,
                      bdm_uuid: str, action_id: int, shared_target: str | None) -> None:
        """``shared_target``: the backend's service uuid when its volumes share
        iSCSI targets (the host side then runs under that host-wide lock)."""
        self._cast(ctx, host, "attach_volume", instance_uuid=instance_uuid, bdm_uuid=bdm_uuid,
                   action_id=action_id, shared_target=shared_target)

    def detach_volume(self, ctx: RequestContext, host: str, instance_uuid: str,
                      volume_id: str, attachment_id: str | None, action_id: int,
                      shared_target: str | None) -> None:
        self._cast(ctx, host, "detach_volume", instance_uuid=instance_uuid,
                   volume_id=volume_id, attachment_id=attachment_id, action_id=action_id,
                   shared_target=shared_target)
