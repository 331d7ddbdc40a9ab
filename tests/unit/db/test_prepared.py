"""Prepared statements on SQLite (the same cases run on PostgreSQL and MariaDB
in tests/integration/test_databases.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import bindparam, select

from tests.unit.db.prepared_cases import CASES
from tether.db import migrate
from tether.db.api import Database
from tether.db.prepared import Prepared
from tether.db.records import VOLUMES


@pytest.fixture
def db(tmp_path: object) -> Database:
    database = Database(f"sqlite:///{tmp_path}/t.db")
    migrate.upgrade(database)
    return database


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_prepared_statements(db: Database, case: Callable[[Database], None]) -> None:
    case(db)


def test_a_list_bound_at_execution_cannot_be_prepared(db: Database) -> None:
    stmt = Prepared(select(VOLUMES.columns["id"]).where(
        VOLUMES.columns["id"].in_(bindparam("ids", expanding=True))))
    with db.begin() as c, pytest.raises(ValueError, match="through SQLAlchemy"):
        stmt.rows(c, {"ids": ["a"]})
