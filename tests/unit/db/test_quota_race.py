"""Quota races on SQLite (a file: several connections, as in the service);
the same cases run on PostgreSQL and MariaDB in
tests/integration/test_quota_databases.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.unit.db.quota_cases import CASES
from tether.db.api import Database


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_quota_race(db: Database, case: Callable[[Database], None]) -> None:
    case(db)
