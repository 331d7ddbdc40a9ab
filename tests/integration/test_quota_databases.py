"""Quota races on the distributed mode's real databases, PostgreSQL and
MariaDB (the cases of tests/unit/db/quota_cases.py, which the unit tests run
on SQLite): six concurrent creates with room for one, exactly one wins."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.integration import test_databases
from tests.unit.db.quota_cases import CASES
from tether.db import migrate
from tether.db.api import Database

pytestmark = pytest.mark.integration

db = test_databases.db  # the same fixture: a database of its own on each server


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_quota_race(db: Database, case: Callable[[Database], None]) -> None:
    migrate.upgrade(db)
    case(db)
