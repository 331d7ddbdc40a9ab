"""The local identity's store on SQLite (the same cases run on PostgreSQL and
MariaDB in tests/integration/test_databases.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.unit.identity.store_cases import CASES
from tether.db.api import Database


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_identity_store(db: Database, tmp_path: Path,
                        case: Callable[[Database, str], None]) -> None:
    case(db, str(tmp_path))
