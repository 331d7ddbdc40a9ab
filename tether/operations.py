"""Durable operations: every attach and detach is an instance action with one
event per step of the spec (s1, s1.1, s1.1.1, s2, s1.2+s1.3 ...), each
written when it starts and when it ends, so a hang is visible while it
happens and a crash leaves a record of where it stopped."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Connection, bindparam, insert, select, update

from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database
from tether.states import operation as op_states

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# step names, in the order the spec gives them
DETACH_STEPS = ("s1:compute_api", "s1.1:driver_detach", "s1.1.1:guest_device_removal",
                "s2:host_disconnect", "s1.2+s1.3:attachment_delete")
ATTACH_STEPS = ("a1:compute_api", "a1.1:attachment_update", "a2:host_connect",
                "a1.1.1:guest_device_add", "a1.3:attachment_complete")


@dataclass(frozen=True)
class ActionRef:
    id: int
    instance_uuid: str
    request_id: str


# statements built once: an operation writes about a dozen rows, and compiling
# them each time (or going through an ORM session) cost five times as much
_NEW_ACTION = insert(models.InstanceAction).returning(models.InstanceAction.id)
_NEW_EVENT = insert(models.InstanceActionEvent).returning(models.InstanceActionEvent.id)
_END_EVENT = update(models.InstanceActionEvent).where(
    models.InstanceActionEvent.id == bindparam("event_id"))
_END_ACTION = update(models.InstanceAction).where(
    models.InstanceAction.id == bindparam("action_id"))


class Operations:
    def __init__(self, db: Database, host: str | None) -> None:
        self.db = db
        self.host = host
        self._local = threading.local()  # .pending: finished steps not yet written

    @contextlib.contextmanager
    def batched(self) -> Iterator[None]:
        """Within the block (one thread's run of a flow), a step's successful
        finish is written together with the flow's next write (the next
        step's start, the action's finish) instead of in a transaction of its
        own: half the commits, and the record still shows each step the
        moment it starts.  A failure is written at once; whatever is still
        pending when the block ends is written then."""
        self._local.pending = []
        try:
            yield
        finally:
            if self._local.pending:
                self._write(lambda conn: None)
            self._local.pending = None

    def _write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a transaction that also writes the pending finishes."""
        pending: list[dict[str, object]] = getattr(self._local, "pending", None) or []
        with self.db.engine.begin() as conn:
            if pending:
                conn.execute(_END_EVENT, pending)
            result = work(conn)
        pending.clear()  # only once committed
        return result

    def start_action(self, ctx: RequestContext, instance_uuid: str, action: str,
                     resource_id: str | None = None, done_step: str | None = None,
                     started: dt.datetime | None = None) -> ActionRef:
        """Record an action.  ``done_step``: a step already done by then (the
        API's checks, begun at ``started``), recorded in the same transaction."""
        now = models.utcnow()

        def write(conn: Connection) -> int:
            action_id = conn.execute(_NEW_ACTION, {
                "request_id": ctx.request_id, "instance_uuid": instance_uuid,
                "action": action, "project_id": ctx.project_id, "user_id": ctx.user_id,
                "start_time": started or now, "resource_id": resource_id}).scalar_one()
            if done_step is not None:
                conn.execute(_NEW_EVENT, {
                    "action_id": action_id, "event": done_step, "start_time": started or now,
                    "finish_time": now, "host": self.host, "result": op_states.SUCCESS,
                    "details": None})
            return int(action_id)

        return ActionRef(self._write(write), instance_uuid, ctx.request_id)

    @contextlib.contextmanager
    def step(self, action: ActionRef, event: str, host: str | None = None,
             started: dt.datetime | None = None) -> Iterator[None]:
        """Record ``event`` around the block: Success, or Error with the
        traceback; the exception propagates.  ``started``: when the step
        really began, if before the action was recorded."""
        event_id: int = self._write(lambda conn: conn.execute(_NEW_EVENT, {
            "action_id": action.id, "event": event, "start_time": started or models.utcnow(),
            "host": host or self.host}).scalar_one())
        try:
            yield
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc))
            self._finish_event(event_id, op_states.MACHINE.check("fail", op_states.RUNNING,
                                                                 event), tb, str(exc))
            raise
        done = {"event_id": event_id, "finish_time": models.utcnow(),
                "result": op_states.SUCCESS, "traceback": None, "details": None}
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(done)
        else:
            self._write(lambda conn: conn.execute(_END_EVENT, done))

    def record(self, action: ActionRef, event: str, result: str, details: str) -> None:
        """A step that happened without work of its own (e.g. a skip), with why."""
        now = models.utcnow()
        self._write(lambda conn: conn.execute(_NEW_EVENT, {
            "action_id": action.id, "event": event, "start_time": now, "finish_time": now,
            "host": self.host, "result": result, "details": details}).close())

    def _finish_event(self, event_id: int, result: str, tb: str | None,
                      details: str | None) -> None:
        self._write(lambda conn: conn.execute(_END_EVENT, {
            "event_id": event_id, "finish_time": models.utcnow(), "result": result,
            "traceback": tb, "details": details}))

    def finish_action(self, action: ActionRef, message: str | None = None) -> None:
        now = models.utcnow()
        self._write(lambda conn: conn.execute(_END_ACTION, {
            "action_id": action.id, "finish_time": now, "message": message,
            "updated_at": now}))

    def unfinished(self, host: str, actions: tuple[str, ...],
                   started_before: dt.datetime | None = None) -> list[models.InstanceAction]:
        """Actions on servers of ``host`` that never finished (a crash, a lost
        message), optionally only those started before a moment."""
        with self.db.session() as s:
            q = select(models.InstanceAction).join(
                models.Instance, models.Instance.uuid == models.InstanceAction.instance_uuid
            ).where(models.Instance.host == host,
                    models.InstanceAction.finish_time.is_(None),
                    models.InstanceAction.action.in_(actions))
            if started_before is not None:
                q = q.where(models.InstanceAction.start_time < started_before)
            rows = list(s.scalars(q).all())
            for r in rows:
                s.expunge(r)
            return rows
