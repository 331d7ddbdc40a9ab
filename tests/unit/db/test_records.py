"""The records mirror the ORM models (every table has a gateway), and the gateway's
statements behave as the state machines need."""

from __future__ import annotations

import dataclasses
import threading

import pytest
from sqlalchemy import inspect

from tether.db import migrate, models
from tether.db.api import Database
from tether.db.records import (
    ACTIONS,
    APP_CREDENTIALS,
    ATTACHMENTS,
    BDMS,
    EVENTS,
    IMAGES,
    INSTANCES,
    PROJECTS,
    REVOKED_TOKENS,
    ROLE_ASSIGNMENTS,
    SERVICES,
    USERS,
    VOLUMES,
    Gateway,
)


@pytest.mark.parametrize("gateway", [VOLUMES, ATTACHMENTS, SERVICES, INSTANCES, BDMS, ACTIONS,
                                     EVENTS, IMAGES, PROJECTS, USERS, ROLE_ASSIGNMENTS,
                                     APP_CREDENTIALS, REVOKED_TOKENS], ids=lambda g: g.table.name)
def test_record_fields_are_the_model_attributes_in_order(gateway: Gateway[object]) -> None:
    model = next(m.class_ for m in models.Base.registry.mappers
                 if m.local_table is gateway.table)
    assert gateway.fields() == tuple(p.key for p in inspect(model).column_attrs)


@pytest.fixture
def db() -> Database:
    database = Database("sqlite://")
    migrate.upgrade(database)
    return database


def _volume(db: Database, status: str = "in-use") -> str:
    with db.begin() as c:
        return VOLUMES.insert(c, {"id": "v1", "project_id": "p", "user_id": "u", "size": 1,
                                  "status": status, "meta": {"a": "b"}}).id


def test_insert_applies_defaults_and_returns_the_row(db: Database) -> None:
    with db.begin() as c:
        vol = VOLUMES.insert(c, {"id": "v1", "project_id": "p", "user_id": "u", "size": 2,
                                 "status": "creating"})
    assert (vol.size, vol.deleted, vol.multiattach, vol.meta) == (2, False, False, {})
    assert vol.created_at is not None and vol.updated_at is None


def test_update_only_from_an_expected_state(db: Database) -> None:
    vid = _volume(db)
    with db.begin() as c:
        assert not VOLUMES.update(c, vid, {"status": "deleting"},
                                  {"status": ["available", "error"]})
        assert VOLUMES.get(c, vid).status == "in-use"  # type: ignore[union-attr]
        assert VOLUMES.update(c, vid, {"status": "detaching"}, {"status": ["in-use"]})
        vol = VOLUMES.get(c, vid)
    assert vol is not None and vol.status == "detaching" and vol.updated_at is not None
    assert vol.meta == {"a": "b"}  # the "metadata" column, under its attribute name


def test_update_with_a_scalar_expectation(db: Database) -> None:
    vid = _volume(db)
    with db.begin() as c:
        assert not VOLUMES.update(c, vid, {"name": "x"}, {"deleted": True})
        assert VOLUMES.update(c, vid, {"name": "x", "meta": {}}, {"deleted": False})
        vol = VOLUMES.get(c, vid)
    assert vol is not None and (vol.name, vol.meta) == ("x", {})


def test_cached_statements_keep_their_own_state_sets(db: Database) -> None:
    vid = _volume(db)
    with db.begin() as c:
        assert VOLUMES.update(c, vid, {"status": "detaching"}, {"status": ["in-use"]})
        assert VOLUMES.update(c, vid, {"status": "in-use"}, {"status": ["detaching"]})
        # the same two shapes again: each statement still admits only its states
        assert not VOLUMES.update(c, vid, {"status": "in-use"}, {"status": ["detaching"]})
        assert VOLUMES.update(c, vid, {"status": "detaching"}, {"status": ["in-use"]})
        vol = VOLUMES.get(c, vid)
    assert vol is not None and vol.status == "detaching"


def test_a_race_between_two_transitions_has_one_winner(tmp_path: object) -> None:
    database = Database(f"sqlite:///{tmp_path}/race.db")
    migrate.upgrade(database)
    vid = _volume(database, "available")
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def reserve() -> None:
        barrier.wait()
        with database.begin() as c:
            wins.append(VOLUMES.update(c, vid, {"status": "reserved"},
                                       {"status": ["available"]}))

    threads = [threading.Thread(target=reserve) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]
    database.dispose()


def test_records_are_frozen(db: Database) -> None:
    vid = _volume(db)
    with db.begin() as c:
        vol = VOLUMES.get(c, vid)
    with pytest.raises(dataclasses.FrozenInstanceError):
        vol.status = "x"  # type: ignore[misc,union-attr]
