"""The same migrations and state primitive on the distributed mode's real
databases: PostgreSQL and MariaDB, each in a database made for this run."""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration import daemons
from tests.integration.daemons import ServerUnavailable, database_server
from tests.unit.db.prepared_cases import CASES
from tests.unit.identity.store_cases import CASES as IDENTITY_CASES
from tether.db import migrate
from tether.db.api import Database
from tether.db.records import VOLUMES

pytestmark = pytest.mark.integration



@pytest.fixture(params=["mariadb", "postgresql"])
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    try:  # (checked once per session: no wait per case when a server is missing)
        server = database_server(request.param)
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    name = f"tether_test_{uuid.uuid4().hex[:12]}"
    # MariaDB: no database (the tests' user may see only tether_% ones)
    admin_db = "postgres" if request.param == "postgresql" else ""
    admin = sa.create_engine(f"{server}/{admin_db}", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    database = Database(f"{server}/{name}")
    try:
        yield database
    finally:
        database.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name}"))
        admin.dispose()


def test_migrations_and_conditional_update(db: Database) -> None:
    migrate.upgrade(db)
    assert migrate.current(db) == migrate.head()
    with db.begin() as c:
        vol = VOLUMES.insert(c, {"id": str(uuid.uuid4()), "project_id": "p", "user_id": "u",
                                 "size": 1, "status": "in-use", "meta": {"k": "v"}})
    assert vol.deleted is False and vol.created_at is not None  # column defaults applied
    with db.begin() as c:
        assert not VOLUMES.update(c, vol.id, {"status": "deleting"}, {"status": ["available"]})
        assert VOLUMES.update(c, vol.id, {"status": "detaching"}, {"status": ["in-use"]})
    with db.begin() as c:
        again = VOLUMES.get(c, vol.id)
    assert again is not None and again.status == "detaching" and again.meta == {"k": "v"}
    assert again.updated_at is not None


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__)
def test_prepared_statements(db: Database, case: Callable[[Database], None]) -> None:
    migrate.upgrade(db)
    case(db)


def test_a_refused_login_fails_at_once_with_why_and_once_per_session(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The login comes from the file tools/services.sh writes; a server that
    refuses it is checked once per session, not waited for by every case."""
    database_server("postgresql")  # listening: only the login is wrong below
    logins = tmp_path / "test-databases.json"
    logins.write_text(json.dumps({
        "postgresql": "postgresql+psycopg2://tether_nobody:s3cret@127.0.0.1:5432"}))
    monkeypatch.setattr(daemons, "DATABASES_FILE", str(logins))
    monkeypatch.setattr(daemons, "_CHECKED", {})
    with pytest.raises(ServerUnavailable) as first:
        database_server("postgresql")
    assert "tether_nobody" in str(first.value) and "s3cret" not in str(first.value)
    assert "refuses the tests' login" in str(first.value)
    # a server the file does not name: the machine's default
    assert daemons.database_servers()["mariadb"] == daemons.DEFAULT_SERVERS["mariadb"]
    logins.write_text(json.dumps(daemons.DEFAULT_SERVERS))  # fixed, but not re-checked
    with pytest.raises(ServerUnavailable) as again:
        database_server("postgresql")
    assert str(again.value) == str(first.value)


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=lambda c: c.__name__)
def test_identity_store(db: Database, tmp_path: Path,
                        case: Callable[[Database, str], None]) -> None:
    """The local identity (unique names, role revisions, the first-start
    bootstrap of two processes at once) on PostgreSQL and MariaDB."""
    migrate.upgrade(db)
    case(db, str(tmp_path))
