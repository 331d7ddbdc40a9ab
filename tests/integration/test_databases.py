"""The same migrations and state primitive on the distributed mode's real
databases: PostgreSQL and MariaDB, each in a database made for this run."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.integration.daemons import ensure_database_server
from tests.unit.db.prepared_cases import CASES
from tests.unit.identity.store_cases import CASES as IDENTITY_CASES
from tether.db import migrate
from tether.db.api import Database
from tether.db.records import VOLUMES

pytestmark = pytest.mark.integration

SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306",
}


@pytest.fixture(params=sorted(SERVERS))
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    ensure_database_server(request.param)
    server = SERVERS[request.param]
    name = f"tether_test_{uuid.uuid4().hex[:12]}"
    admin_db = "postgres" if request.param == "postgresql" else "mysql"
    admin = sa.create_engine(f"{server}/{admin_db}", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    except sa.exc.OperationalError as exc:
        pytest.fail(f"{request.param} at {server} is not reachable: {exc.orig}")
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


@pytest.mark.parametrize("case", IDENTITY_CASES, ids=lambda c: c.__name__)
def test_identity_store(db: Database, tmp_path: Path,
                        case: Callable[[Database, str], None]) -> None:
    """The local identity (unique names, role revisions, the first-start
    bootstrap of two processes at once) on PostgreSQL and MariaDB."""
    migrate.upgrade(db)
    case(db, str(tmp_path))
