"""Quotas: how much of each resource a project may hold, enforced without
a race.

A project's limits are the ``[quota]`` defaults overlaid with its own rows
in ``quotas`` (``PUT os-quota-sets``).  Usage is never stored: each side
counts it from the rows it is made of (volumes and their sizes, servers and
their flavors' vCPUs and RAM), as Nova has done since Pike, so that no crash
can leave a usage that disagrees with what exists.

A create is race-free because the count and the insert are one transaction
that first locks the project: :meth:`Quotas.claim` UPDATEs the project's row
in ``quota_locks`` (a row lock on PostgreSQL and MariaDB, the write lock on
SQLite, whose transaction thus begins as ``BEGIN IMMEDIATE`` would), then
counts, compares and hands the transaction to the caller, who inserts.  A
second create of the same project waits at the lock until the first has
committed or rolled back, and then counts its row.  The lock must be the
transaction's first statement: on MariaDB (repeatable read) the count then
reads a snapshot taken after the lock, and on SQLite no read snapshot can
go stale before the write.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from tether.db import models
from tether.db.api import Database, Tx

UNLIMITED = -1
BLOCK_STORAGE = "block_storage"
COMPUTE = "compute"
DISKS = "disks"  # a server's disk devices: the lock of one server's attaches

Count = Callable[[Tx, str], Mapping[str, int]]
"""A side's usage of one project: resource -> amount, counted in ``Tx``."""

_QUOTAS = cast(Table, models.Quota.__table__)
_LOCKS = cast(Table, models.QuotaLock.__table__)
_Q, _L = _QUOTAS.c, _LOCKS.c


@dataclass(frozen=True)
class Excess:
    """Why a request does not fit: the first resource it would exceed."""

    resource: str
    requested: int
    used: int
    limit: int


class OverQuota(Exception):
    """A request would exceed a limit; each API words it as its model does
    (Cinder: 413 overLimit, Nova: 403)."""

    def __init__(self, excess: Excess) -> None:
        super().__init__(f"quota {excess.resource} exceeded: requested {excess.requested}, "
                         f"used {excess.used} of {excess.limit}")
        self.excess = excess


@dataclass(frozen=True)
class QuotaSet:
    limits: dict[str, int]
    usage: dict[str, int]


def over(limits: Mapping[str, int], usage: Mapping[str, int],
         requested: Mapping[str, int]) -> Excess | None:
    """The first resource (in ``requested``'s order) that ``requested`` on
    top of ``usage`` takes beyond its limit; -1 is unlimited."""
    for resource, amount in requested.items():
        limit = limits.get(resource, UNLIMITED)
        used = usage.get(resource, 0)
        if limit >= 0 and amount > 0 and used + amount > limit:
            return Excess(resource, amount, used, limit)
    return None


class Locks:
    """The rows of ``quota_locks``: one per (key, area), created once, never
    deleted; :meth:`hold` locks one in a transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._known: set[tuple[str, str]] = set()
        self._mutex = threading.Lock()

    def ensure(self, key: str, area: str) -> None:
        """The row exists (made in its own transaction: an insert racing
        another one's in the caller's transaction would abort it on
        PostgreSQL)."""
        with self._mutex:
            if (key, area) in self._known:
                return
        with self.db.begin() as c:
            c.execute(_insert_ignore(c, {"project_id": key, "area": area, "generation": 0}))
        with self._mutex:
            self._known.add((key, area))

    def hold(self, c: Tx, key: str, area: str) -> bool:
        """Lock the row until ``c`` ends; False (nothing locked, and the row
        no longer taken for granted) if it is missing: :meth:`ensure` it
        outside ``c`` and try again."""
        done = c.execute(update(_LOCKS).where(
            _L.project_id == key, _L.area == area).values(generation=_L.generation + 1))
        if getattr(done, "rowcount", 0) == 1:
            return True
        with self._mutex:  # removed behind this process's back (a restored database)
            self._known.discard((key, area))
        return False

    @contextmanager
    def held(self, key: str, area: str) -> Iterator[Tx]:
        """A transaction whose first statement locked the row."""
        for _ in range(2):
            self.ensure(key, area)
            with self.db.begin() as c:
                if self.hold(c, key, area):
                    yield c
                    return
        raise RuntimeError(f"quota lock row {area}/{key} could not be made")


def _insert_ignore(c: Tx, values: dict[str, Any]) -> Any:
    table = _LOCKS
    name = c.dialect.name
    if name == "postgresql":
        return postgresql.insert(table).values(values).on_conflict_do_nothing()
    if name in ("mysql", "mariadb"):
        return mysql.insert(table).values(values).prefix_with("IGNORE")
    return sqlite.insert(table).values(values).on_conflict_do_nothing()


class Quotas:
    """One side's quotas (``area``): its resources with their defaults (the
    order is the order views list them) and how it counts a project's usage
    of them (resources it does not count, such as snapshots, are 0)."""

    def __init__(self, db: Database, locks: Locks, area: str, defaults: Mapping[str, int],
                 count: Count) -> None:
        self.db = db
        self.locks = locks
        self.area = area
        self.defaults = dict(defaults)
        self.count = count

    def limits(self, c: Tx, project_id: str) -> dict[str, int]:
        out = dict(self.defaults)
        rows = c.execute(select(_Q.resource, _Q.hard_limit).where(
            _Q.project_id == project_id, _Q.resource.in_(list(self.defaults))))
        out.update({resource: int(limit) for resource, limit in rows})
        return out

    def usage(self, c: Tx, project_id: str) -> dict[str, int]:
        counted = self.count(c, project_id)
        return {r: int(counted.get(r, 0)) for r in self.defaults}

    def show(self, project_id: str) -> QuotaSet:
        with self.db.begin() as c:
            return QuotaSet(self.limits(c, project_id), self.usage(c, project_id))

    @contextmanager
    def claim(self, project_id: str, requested: Mapping[str, int]) -> Iterator[Tx]:
        """A transaction in which ``requested`` fits the project's quotas and
        stays so until it ends (the project is locked): insert what it counts
        in it.  :class:`OverQuota` when it does not fit."""
        with self.locks.held(project_id, self.area) as c:
            excess = over(self.limits(c, project_id), self.usage(c, project_id), requested)
            if excess is not None:
                raise OverQuota(excess)
            yield c

    def update(self, project_id: str, values: Mapping[str, int], force: bool = False
               ) -> QuotaSet:
        """Set limits (-1: unlimited).  A limit below what the project already
        uses is refused (:class:`OverQuota` naming it) unless ``force``."""
        unknown = sorted(set(values) - set(self.defaults))
        if unknown:
            raise KeyError(", ".join(unknown))
        with self.locks.held(project_id, self.area) as c:  # no create counts meanwhile
            usage = self.usage(c, project_id)
            if not force:
                for resource, limit in values.items():
                    if 0 <= limit < usage[resource]:
                        raise OverQuota(Excess(resource, 0, usage[resource], limit))
            current = c.execute(select(_Q.resource).where(
                _Q.project_id == project_id, _Q.resource.in_(list(values))))
            have = {r for (r,) in current}
            now = models.utcnow()
            for resource, limit in values.items():
                if resource in have:
                    c.execute(update(_QUOTAS).where(
                        _Q.project_id == project_id, _Q.resource == resource).values(
                        hard_limit=limit, updated_at=now))
                else:
                    c.execute(insert(_QUOTAS).values(
                        project_id=project_id, resource=resource, hard_limit=limit,
                        created_at=now))
            return QuotaSet(self.limits(c, project_id), usage)

    def delete(self, project_id: str) -> None:
        """The project's limits go back to the defaults."""
        with self.db.begin() as c:
            c.execute(delete(_QUOTAS).where(
                _Q.project_id == project_id, _Q.resource.in_(list(self.defaults))))
