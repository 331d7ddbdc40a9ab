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
from typing import Any, TypeVar

from sqlalchemy import bindparam, insert, select, update

from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import table_of
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


# an operation writes about a dozen of these rows on its request path: the
# statements are prepared (tether.db.prepared); parameters are named p_<column>
_ACTIONS, _EVENTS = table_of(models.InstanceAction), table_of(models.InstanceActionEvent)


def _bound(*columns: str) -> dict[str, Any]:
    return {c: bindparam(f"p_{c}") for c in columns}


def _p(**values: Any) -> dict[str, Any]:
    return {f"p_{k}": v for k, v in values.items()}


_NEW_ACTION = Prepared(insert(_ACTIONS).values(_bound(
    "request_id", "instance_uuid", "action", "project_id", "user_id", "start_time",
    "resource_id")).returning(_ACTIONS.c.id))
_NEW_EVENT = Prepared(insert(_EVENTS).values(_bound(
    "action_id", "event", "start_time", "finish_time", "host", "result",
    "details")).returning(_EVENTS.c.id))
_END_EVENT = Prepared(update(_EVENTS).where(_EVENTS.c.id == bindparam("p_id")).values(
    _bound("finish_time", "result", "traceback", "details")))
_END_ACTION = Prepared(update(_ACTIONS).where(_ACTIONS.c.id == bindparam("p_id")).values(
    _bound("finish_time", "message", "updated_at")))


def _new_event(conn: Tx, params: dict[str, Any]) -> int:
    row = _NEW_EVENT.first(conn, params)
    assert row is not None
    return int(row[0])


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

    def _write(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in a transaction that also writes the pending finishes."""
        pending: list[dict[str, Any]] = getattr(self._local, "pending", None) or []
        with self.db.begin() as conn:
            if pending:
                _END_EVENT.run_many(conn, pending)
            result = work(conn)
        pending.clear()  # only once committed
        return result

    def start_action(self, ctx: RequestContext, instance_uuid: str, action: str,
                     resource_id: str | None = None, done_step: str | None = None,
                     started: dt.datetime | None = None) -> ActionRef:
        """Record an action.  ``done_step``: a step already done by then (the
        API's checks, begun at ``started``), recorded in the same transaction."""
        now = models.utcnow()

        def write(conn: Tx) -> int:
            row = _NEW_ACTION.first(conn, _p(
                request_id=ctx.request_id, instance_uuid=instance_uuid, action=action,
                project_id=ctx.project_id, user_id=ctx.user_id, start_time=started or now,
                resource_id=resource_id))
            assert row is not None
            if done_step is not None:
                _NEW_EVENT.first(conn, _p(
                    action_id=row[0], event=done_step, start_time=started or now,
                    finish_time=now, host=self.host, result=op_states.SUCCESS, details=None))
            return int(row[0])

        return ActionRef(self._write(write), instance_uuid, ctx.request_id)

    @contextlib.contextmanager
    def step(self, action: ActionRef, event: str, host: str | None = None,
             started: dt.datetime | None = None,
             first: Callable[[Tx], object] | None = None) -> Iterator[None]:
        """Record ``event`` around the block: Success, or Error with the
        traceback; the exception propagates.  ``started``: when the step
        really began, if before the action was recorded.  ``first``: the
        step's first database change, written with its start."""

        def begin(conn: Tx) -> int:
            if first is not None:
                first(conn)
            return _new_event(conn, _p(
                action_id=action.id, event=event, start_time=started or models.utcnow(),
                finish_time=None, host=host or self.host, result=None, details=None))

        event_id = self._write(begin)
        try:
            yield
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc))
            self._finish_event(event_id, op_states.MACHINE.check("fail", op_states.RUNNING,
                                                                 event), tb, str(exc))
            raise
        done = _p(id=event_id, finish_time=models.utcnow(), result=op_states.SUCCESS,
                  traceback=None, details=None)
        pending = getattr(self._local, "pending", None)
        if pending is not None:
            pending.append(done)
        else:
            self._write(lambda conn: _END_EVENT.run(conn, done))

    def record(self, action: ActionRef, event: str, result: str, details: str) -> None:
        """A step that happened without work of its own (e.g. a skip), with why."""
        now = models.utcnow()
        self._write(lambda conn: _new_event(conn, _p(
            action_id=action.id, event=event, start_time=now, finish_time=now,
            host=self.host, result=result, details=details)))

    def _finish_event(self, event_id: int, result: str, tb: str | None,
                      details: str | None) -> None:
        self._write(lambda conn: _END_EVENT.run(conn, _p(
            id=event_id, finish_time=models.utcnow(), result=result, traceback=tb,
            details=details)))

    def finish_action(self, action: ActionRef, message: str | None = None,
                      last: Callable[[Tx], object] | None = None) -> None:
        """Mark the action finished (``message``: "Error" when it failed);
        ``last``: the operation's last database change, written with it."""
        now = models.utcnow()

        def end(conn: Tx) -> None:
            if last is not None:
                last(conn)
            _END_ACTION.run(conn, _p(id=action.id, finish_time=now, message=message,
                                     updated_at=now))

        self._write(end)

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
