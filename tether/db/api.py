"""Engine, sessions and the one primitive state changes use: a conditional
update (``UPDATE ... WHERE id = :id AND status IN (...)``), so that two API
copies racing on the same volume cannot both succeed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker
from sqlalchemy.pool import StaticPool

from tether.db import models


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed on success, rolled back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    memory = parsed.database in (None, "", ":memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if memory else None,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    return engine


def conditional_update(
    session: Session,
    model: type[models.Base],
    row_id: Any,
    values: dict[str, Any],
    expected: dict[str, Iterable[Any] | Any],
) -> bool:
    """Apply ``values`` to the row only if each expected column holds one of
    the expected values; True if the row was updated."""
    (pk,) = inspect(model).primary_key
    stmt = update(model).where(pk == row_id)
    for column, allowed in expected.items():
        attr: InstrumentedAttribute[Any] = getattr(model, column)
        if isinstance(allowed, (list, tuple, set, frozenset)):
            stmt = stmt.where(attr.in_(list(allowed)))
        else:
            stmt = stmt.where(attr == allowed)
    if "updated_at" not in values and hasattr(model, "updated_at"):
        values = {**values, "updated_at": models.utcnow()}
    result = session.execute(stmt.values(**values).execution_options(synchronize_session=False))
    return bool(result.rowcount)  # type: ignore[attr-defined]
