"""Prepared statements on SQLite (the same cases run on PostgreSQL and MariaDB
in tests/integration/test_databases.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from sqlalchemy import bindparam, select

from tests.unit.db.prepared_cases import CASES
from tether.db.api import Database
from tether.db.prepared import Prepared
from tether.db.records import ATTACHMENTS, VOLUMES


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_prepared_statements(db: Database, case: Callable[[Database], None]) -> None:
    case(db)


def test_a_list_bound_at_execution_cannot_be_prepared(db: Database) -> None:
    stmt = Prepared(select(VOLUMES.columns["id"]).where(
        VOLUMES.columns["id"].in_(bindparam("ids", expanding=True))))
    with db.begin() as c, pytest.raises(ValueError, match="through SQLAlchemy"):
        stmt.rows(c, {"ids": ["a"]})


def test_a_failed_commit_rolls_back_and_returns_the_connection(db: Database) -> None:
    """SQLite checks a deferred foreign key at COMMIT: the commit fails, the
    transaction is rolled back, the error reaches the caller and the pooled
    connection is usable again."""
    checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"), db.begin() as c:
        c.dbapi.execute("PRAGMA defer_foreign_keys = ON")  # this transaction only
        ATTACHMENTS.insert(c, {"id": "a1", "volume_id": "no-such-volume",
                               "attach_status": "reserved", "deleted": False})
    assert db.engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]
    with db.begin() as c:
        assert ATTACHMENTS.get(c, "a1") is None
        VOLUMES.insert(c, {"id": "v2", "project_id": "p", "user_id": "u", "size": 1,
                           "status": "available"})
    with db.begin() as c:
        assert VOLUMES.get(c, "v2") is not None
