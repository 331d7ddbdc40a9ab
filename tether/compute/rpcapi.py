"""Typed client of the compute service's RPC interface (topic
``tether-compute``, one server per hypervisor host).

One cast: ``run_operation``.  The operation itself -- what to do, to what,
with which arguments -- is the instance action the API recorded before
casting (``tether.compute.operations``); the message only names it, so a
recovery that finds the operation in the database does exactly what the
message would have.  The API answers 202 and the operation's progress is
its instance action."""

from __future__ import annotations

from tether.context import RequestContext
from tether.rpc import COMPUTE_TOPIC, Rpc


class ComputeRpcApi:
    def __init__(self, rpc: Rpc) -> None:
        self._rpc = rpc

    def run_operation(self, ctx: RequestContext, host: str, instance_uuid: str,
                      action_id: int) -> None:
        self._rpc.client(COMPUTE_TOPIC, host).cast(
            ctx, "run_operation", instance_uuid=instance_uuid, action_id=action_id)
