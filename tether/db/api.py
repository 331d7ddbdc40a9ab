"""Engine, ORM sessions (the rare paths) and Core transactions (the hot
paths, through :mod:`tether.db.records`, whose ``Gateway.update`` is the one
primitive state changes use: ``UPDATE ... WHERE id = :id AND status IN
(...)``, so that two API copies racing on the same volume cannot both
succeed)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool


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

    def begin(self) -> AbstractContextManager[Connection]:
        """A Core transaction (see :mod:`tether.db.records`): committed on
        success, rolled back on any error."""
        return self.engine.begin()

    def dispose(self) -> None:
        self.engine.dispose()


def _make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    memory = parsed.database in (None, "", ":memory:")
    # LIFO: the connection used last is used next.  Its SQLite page cache is
    # still valid when the last write to the database was its own, which on
    # a flow's sequence of short transactions is most of the time; FIFO hands
    # out the connection idle longest, whose cache another one's commits
    # have invalidated.
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 30},
        poolclass=StaticPool if memory else None,
        **({} if memory else {"pool_use_lifo": True}),
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
