from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tether.db import migrate, models
from tether.db.api import Database, conditional_update


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


def _volume(db: Database, status: str) -> str:
    with db.session() as s:
        s.add(models.Volume(id="v1", project_id="p", user_id="u", size=1, status=status,
                            multiattach=False, meta={}, shared_targets=False,
                            availability_zone="nova", deleted=False))
    return "v1"


def test_conditional_update_applies_only_from_expected_state() -> None:
    db = _db()
    vid = _volume(db, "in-use")
    with db.session() as s:
        assert not conditional_update(s, models.Volume, vid, {"status": "deleting"},
                                      {"status": ["available", "error"]})
        assert conditional_update(s, models.Volume, vid, {"status": "detaching"},
                                  {"status": "in-use"})
    with db.session() as s:
        vol = s.get(models.Volume, vid)
        assert vol is not None and vol.status == "detaching" and vol.updated_at is not None
