"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.db import migrate
from tether.db.api import Database


@pytest.fixture
def db(tmp_path: Path) -> Database:
    """A SQLite database in the test's own directory, at the current schema
    (a test module with a ``db`` of its own uses that one)."""
    database = Database(f"sqlite:///{tmp_path}/t.db")
    migrate.upgrade(database)
    return database
