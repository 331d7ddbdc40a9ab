"""The services table: which service runs where, whether it is alive (its
heartbeat), and its current incarnation.

Each start of a service process registers a new incarnation.  Operations
record the incarnation working on them, so a recovery can tell an operation
whose worker died (its incarnation is no longer current, or its service
stopped beating) from one that is merely slow.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import bindparam, update

from tether.db import models
from tether.db.api import Database
from tether.db.prepared import Prepared
from tether.db.records import SERVICES, ServiceRecord, by

_S = SERVICES.columns
_BEAT = Prepared(update(SERVICES.table).where(_S["uuid"] == bindparam("uuid")).values(
    {"last_seen_at": bindparam("now"), "report_count": _S["report_count"] + 1,
     "updated_at": bindparam("now")}))
_LIVE = Prepared(by(SERVICES, _S["binary"] == bindparam("binary"), _S["disabled"].is_(False),
                    _S["last_seen_at"] >= bindparam("cutoff")))
_BY_HOST = Prepared(by(SERVICES, _S["host"] == bindparam("host"),
                       _S["binary"] == bindparam("binary")))
_ALL = Prepared(by(SERVICES, _S["deleted"].is_(False)))


@dataclass(frozen=True)
class Owners:
    """Who is alive now: current incarnations with a fresh heartbeat."""

    live: frozenset[str]

    def alive(self, owner: str | None) -> bool:
        return owner is not None and owner in self.live


def register(db: Database, host: str, binary: str, topic: str) -> ServiceRecord:
    """This process's service row, with a new incarnation and a heartbeat now."""
    now = models.utcnow()
    incarnation = str(uuid.uuid4())
    with db.begin() as c:
        row = SERVICES.first(c, _BY_HOST, {"host": host, "binary": binary})
        if row is None:
            return SERVICES.insert(c, {
                "uuid": str(uuid.uuid4()), "host": host, "binary": binary, "topic": topic,
                "disabled": False, "report_count": 0, "deleted": False, "created_at": now,
                "last_seen_at": now, "incarnation": incarnation})
        SERVICES.update(c, row.id, {"last_seen_at": now, "incarnation": incarnation,
                                    "topic": topic})
        return SERVICES.get(c, row.id)  # type: ignore[return-value]


def find(db: Database, host: str, binary: str) -> ServiceRecord | None:
    """The service row of ``binary`` on ``host``, alive or not."""
    with db.begin() as c:
        return SERVICES.first(c, _BY_HOST, {"host": host, "binary": binary})


def beat(db: Database, service_uuid: str) -> None:
    with db.begin() as c:
        _BEAT.run(c, {"uuid": service_uuid, "now": models.utcnow()})


def live(db: Database, binary: str, down_after: float) -> list[ServiceRecord]:
    """Services of ``binary`` with a heartbeat in the last ``down_after`` seconds."""
    cutoff = models.utcnow() - dt.timedelta(seconds=down_after)
    with db.begin() as c:
        return SERVICES.all(c, _LIVE, {"binary": binary, "cutoff": cutoff})


def owners(db: Database, down_after: float) -> Owners:
    cutoff = models.utcnow() - dt.timedelta(seconds=down_after)
    with db.begin() as c:
        rows = SERVICES.all(c, _ALL)
    return Owners(frozenset(r.incarnation for r in rows if r.incarnation
                            and r.last_seen_at is not None and r.last_seen_at >= cutoff))

