from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tether.db import migrate, models
from tether.db.api import Database


def _db() -> Database:
    db = Database("sqlite://")
    migrate.upgrade(db)
    return db


def test_migrations_match_models() -> None:
    db = _db()
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), models.Base.metadata)
    assert diff == []
    assert migrate.current(db) == migrate.head()


def test_upgrade_is_idempotent() -> None:
    db = _db()
    migrate.upgrade(db)
    assert migrate.current(db) == migrate.head()
