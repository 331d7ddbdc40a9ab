"""Durable operations: every server operation (attach, detach, build, delete,
power, shelve ...) is an instance action with one event per step of the spec
(s1, s1.1, s1.1.1, s2, s1.2+s1.3 ...), each written when it starts and when
it ends, so a hang is visible while it happens and a crash leaves a record
of where it stopped.

An operation's ``status`` (``tether.states.operation``) says who may work on
it and ``owner`` which incarnation of which service does: a host claims an
operation (queued → running) before it starts on it, and finishes it only
while it still owns it.  What happened to an operation whose owner died is
``tether.compute.recovery``'s business.

Every step is also a fault point (``tether.faults``): ``<step>:start`` once
its start is written, ``<step>:end`` once its work is done and before its
finish is written.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tether import faults
from tether.compute.repository import ComputeRepository, Notice
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Tx
from tether.db.records import ActionRecord
from tether.exceptions import Conflict
from tether.states import operation as op_states
from tether.states.machine import InvalidTransition

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

    @classmethod
    def of(cls, row: ActionRecord) -> ActionRef:
        return cls(row.id, row.instance_uuid, row.request_id)


class InFlight:
    """The operations a thread of this process is working on right now: a
    recovery leaves them alone (their owner is alive and at it)."""

    def __init__(self) -> None:
        self._ids: set[int] = set()
        self._guard = threading.Lock()

    @contextlib.contextmanager
    def running(self, action_id: int) -> Iterator[None]:
        with self._guard:
            self._ids.add(action_id)
        try:
            yield
        finally:
            with self._guard:
                self._ids.discard(action_id)

    def __contains__(self, action_id: object) -> bool:
        with self._guard:
            return action_id in self._ids


class Operations:
    def __init__(self, repo: ComputeRepository, host: str | None,
                 owner: str | None = None) -> None:
        """``owner``: the incarnation of the service these operations run in
        (set once the service has registered)."""
        self.repo = repo
        self.host = host
        self.owner = owner
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
                self.write(lambda c: None)
            self._local.pending = None

    def write(self, work: Callable[[Tx], T]) -> T:
        """Run ``work`` in a transaction that also writes the pending finishes."""
        pending: list[dict[str, Any]] = getattr(self._local, "pending", None) or []
        with self.repo.begin() as c:
            self.repo.end_events(c, pending)
            result = work(c)
        pending.clear()  # only once committed
        return result

    # -- the operation ---------------------------------------------------------

    def new(self, c: Tx, ctx: RequestContext, instance_uuid: str, action: str, *,
            status: str, resource_id: str | None = None, args: dict[str, Any] | None = None,
            started: dt.datetime | None = None) -> ActionRecord:
        """Record an operation in ``c``: in ``status`` ``api`` (owned by this
        service) or ``queued``."""
        return self.repo.new_action(c, {
            "request_id": ctx.request_id, "instance_uuid": instance_uuid, "action": action,
            "project_id": ctx.project_id, "user_id": ctx.user_id,
            "start_time": started or models.utcnow(), "resource_id": resource_id,
            "status": status, "owner": self.owner if status == op_states.API else None,
            "args": args})

    def get(self, action_id: int) -> ActionRecord | None:
        with self.repo.begin() as c:
            return self.repo.action(c, action_id)

    def claim(self, c: Tx, row: ActionRecord, notice: Notice | None = None
              ) -> ActionRecord | None:
        """Take ``row`` (queued, or running under a dead owner) for this
        service, in ``c``; None when someone else took it first."""
        try:
            return self.repo.apply(c, op_states.MACHINE, row, "claim",
                                   values={"owner": self.owner},
                                   expect={"owner": row.owner}, notice=notice)
        except (InvalidTransition, Conflict):
            return None

    def take_over(self, row: ActionRecord) -> ActionRecord | None:
        """Take the API steps of an operation whose API process died."""
        with self.repo.begin() as c:
            try:
                return self.repo.apply(c, op_states.MACHINE, row, "take_over",
                                       values={"owner": self.owner},
                                       expect={"owner": row.owner})
            except (InvalidTransition, Conflict):
                return None

    def queue(self, c: Tx, row: ActionRecord) -> ActionRecord:
        """Hand the operation to its host (written before the cast)."""
        return self.repo.apply(c, op_states.MACHINE, row, "queue", values={"owner": None},
                               expect={"owner": self.owner})

    def unqueue(self, row: ActionRecord) -> ActionRecord | None:
        """Take back an operation whose cast failed, unless its host has it."""
        with self.repo.begin() as c:
            try:
                return self.repo.apply(c, op_states.MACHINE, row, "unqueue",
                                       values={"owner": self.owner}, expect={"owner": None})
            except (InvalidTransition, Conflict):
                return None

    def finish_action(self, action: ActionRef, message: str | None = None,
                      last: Callable[[Tx], object] | None = None,
                      notice: Notice | None = None) -> None:
        """Finish the operation (``message`` "Error" when it failed), while this
        service still owns it; ``last``: its last database change, written
        with it; ``notice``: sent once that is committed."""
        now = models.utcnow()

        def end(c: Tx) -> None:
            if last is not None:
                last(c)
            self.repo.apply_to(c, op_states.MACHINE, action.id,
                               "fail" if message else "succeed",
                               values={"finish_time": now, "message": message},
                               expect={"owner": self.owner}, notice=notice)

        self.write(end)

    # -- steps -------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, action: ActionRef, event: str, host: str | None = None,
             started: dt.datetime | None = None,
             first: Callable[[Tx], object] | None = None) -> Iterator[None]:
        """Record ``event`` around the block: Success, or Error with the
        traceback; the exception propagates.  ``started``: when the step
        really began, if before the action was recorded.  ``first``: the
        step's first database change, written with its start."""

        def begin(c: Tx) -> int:
            if first is not None:
                first(c)
            return self.repo.new_event(c, {
                "action_id": action.id, "event": event,
                "start_time": started or models.utcnow(), "finish_time": None,
                "host": host or self.host, "result": None, "details": None})

        event_id = self.write(begin)
        faults.point(f"{event}:start")
        try:
            yield
        except BaseException as exc:
            tb = "".join(traceback.format_exception(exc))
            self._end_step(event_id, "fail", tb, str(exc), at_once=True)
            raise
        faults.point(f"{event}:end")
        self._end_step(event_id, "finish", None, None, at_once=False)

    def _end_step(self, event_id: int, how: str, tb: str | None, details: str | None,
                  at_once: bool) -> None:
        (result,) = op_states.STEP.check(how, {"result": op_states.STEP_RUNNING},
                                         str(event_id)).values()
        done = {"id": event_id, "finish_time": models.utcnow(), "result": result,
                "traceback": tb, "details": details}
        pending = getattr(self._local, "pending", None)
        if pending is not None and not at_once:
            pending.append(done)
        else:
            self.write(lambda c: self.repo.end_events(c, [done]))

    def step_done(self, c: Tx, action_id: int, event: str, started: dt.datetime) -> None:
        """Record, in ``c``, a step done since ``started`` (the API's steps: the
        operation's status says where a crash stopped them, not their events)."""
        self.repo.new_event(c, {"action_id": action_id, "event": event, "start_time": started,
                                "finish_time": models.utcnow(), "host": self.host,
                                "result": op_states.SUCCESS, "details": None})

    def record(self, action: ActionRef, event: str, result: str, details: str) -> None:
        """A step that happened without work of its own (a skip, a recovery), with why."""
        now = models.utcnow()
        self.write(lambda c: self.repo.new_event(c, {
            "action_id": action.id, "event": event, "start_time": now, "finish_time": now,
            "host": self.host, "result": result, "details": details}))
