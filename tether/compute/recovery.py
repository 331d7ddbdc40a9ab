"""Finishing or undoing the operations a crash interrupted.

Every server operation is an instance action with a status and an owner
(``tether.compute.operations``).  An unfinished one whose owner is gone is
recovered by whoever may do its remaining work, on start and by a periodic
sweeper (``docs/recovery.md`` has the table of every operation and step):

* **the server's host** recovers the operations queued for it and those run
  by its earlier life: an operation that was only queued is run (its message
  was lost, or the host died before it began); one that was running is run
  again from the start -- its steps are idempotent -- except an attach,
  which is rolled back (undo of every step it recorded as started) unless it
  had completed its last step;
* **any API process** recovers operations still in their API steps whose
  process died: an attach's reservation or a detach's ``begin_detaching``
  is undone, a boot from volume ends in error with its reservation released,
  a delete or a detach of a server without a host (all of it API steps) is
  finished.

An operation is the recoverer's only once it has claimed it (a conditional
UPDATE on status and owner), so a late message, a second API process or the
sweeper of the next minute never does it twice.  A thread that gave up on an
operation it owns (a rollback that could not finish, a storage side that kept
failing) leaves it to the sweeper of its own process, after
``[compute] operation_timeout``.
"""

from __future__ import annotations

import datetime as dt
import logging

from tether.compute.api import ComputeAPI
from tether.compute.attach import A13, RollbackIncomplete
from tether.compute.manager import Claimed, ComputeManager, Work
from tether.context import admin_context
from tether.db import services
from tether.db.api import Database
from tether.db.models import utcnow
from tether.db.records import ActionRecord
from tether.states import operation as op_states
from tether.states.attachment import ATTACHED

LOG = logging.getLogger(__name__)


def _stale(row: ActionRecord, cutoff: dt.datetime) -> bool:
    return (row.updated_at or row.start_time) < cutoff


class HostRecovery:
    """The compute host's part: operations on its servers."""

    def __init__(self, db: Database, manager: ComputeManager, down_after: float,
                 timeout: float) -> None:
        self.db = db
        self.m = manager
        self.down_after = down_after
        self.timeout = timeout

    def run(self, at_start: bool = False) -> int:
        """Recover what is this host's to recover; how many were."""
        owners = services.owners(self.db, self.down_after)
        cutoff = utcnow() - dt.timedelta(seconds=self.timeout)
        with self.m.repo.begin() as c:
            rows = self.m.repo.unfinished(c, host=self.m.host, statuses=(
                op_states.QUEUED, op_states.RUNNING))
        count = 0
        for row in rows:
            if row.id in self.m.in_flight or not self._orphaned(row, owners, at_start, cutoff):
                continue
            if self.recover(row):
                count += 1
        return count

    def _orphaned(self, row: ActionRecord, owners: services.Owners, at_start: bool,
                  cutoff: dt.datetime) -> bool:
        if row.status == op_states.QUEUED:  # a lost message, or the host died first
            return at_start or _stale(row, cutoff)
        if row.owner == self.m.ops.owner:  # a thread of this process gave up on it
            return _stale(row, cutoff)
        return not owners.alive(row.owner)

    def recover(self, row: ActionRecord) -> bool:
        ctx = admin_context(request_id=row.request_id)
        LOG.warning("recovering %s %s of server %s (%s, owner %s)", row.action, row.id,
                    row.instance_uuid, row.status, row.owner)
        if row.action == "attach_volume" and row.status == op_states.RUNNING:
            then: Work = self._resolve_attach
        else:
            then = self.m.do  # run it (again): every step is idempotent
        try:
            return self.m.claimed(ctx, row.instance_uuid, row.id, then)
        except RollbackIncomplete:
            LOG.warning("operation %s: rollback incomplete, tried again later", row.id)
            return True

    def _resolve_attach(self, op: Claimed) -> None:
        """An attach that was running: finished if storage says its last step
        (attachment complete) was done -- only the bookkeeping was left --,
        else rolled back."""
        action, row, bdm = op.action, op.row, op.bdm
        with self.m.repo.begin() as c:
            events = self.m.repo.events(c, row.id)
        if bdm is None:
            self.m.ops.finish_action(action, "Error")
            return
        if (any(e.event == A13 for e in events) and not bdm.deleted and bdm.attachment_id
                and self.m.volumes.attachment_status(bdm.attachment_id) == ATTACHED):
            LOG.info("attach %s had completed on storage: finished", row.id)
            self.m.ops.finish_action(action)
            return
        self.m.attach.roll_back(op.ctx, action, bdm,
                                why="interrupted (the service stopped); rolled back")


class ApiRecovery:
    """The API's part: operations still in their API steps."""

    def __init__(self, db: Database, api: ComputeAPI, down_after: float,
                 timeout: float) -> None:
        self.db = db
        self.api = api
        self.down_after = down_after
        self.timeout = timeout

    def run(self) -> int:
        owners = services.owners(self.db, self.down_after)
        cutoff = utcnow() - dt.timedelta(seconds=self.timeout)
        with self.api.repo.begin() as c:
            rows = self.api.repo.unfinished(c, statuses=(op_states.API,))
        count = 0
        for row in rows:
            if row.id in self.api.in_flight:
                continue
            mine = row.owner == self.api.ops.owner
            if (mine and not _stale(row, cutoff)) or (not mine and owners.alive(row.owner)):
                continue
            taken = self.api.ops.take_over(row)
            if taken is None:
                continue
            LOG.warning("recovering the API steps of %s %s of server %s (owner %s)",
                        row.action, row.id, row.instance_uuid, row.owner)
            try:
                self.api.undo(taken)
            except Exception:
                LOG.exception("recovery of operation %s failed; tried again later", row.id)
                continue
            count += 1
        return count
