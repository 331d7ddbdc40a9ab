"""The engine and its transactions: :meth:`Database.begin` is the one way to
the database, used by the side repositories (``tether.compute.repository``,
``tether.volume.repository``), the service registry and the image registry.
Statements go through :mod:`tether.db.records` gateways (frozen records in
and out; ``Gateway.update`` is the conditional UPDATE every state change is
made of, see :mod:`tether.db.transitions`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Executable, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = _make_engine(url)

    def begin(self) -> AbstractContextManager[Tx]:
        """A transaction (see :class:`Tx`): committed on success, rolled back
        on any error."""
        return _Begin(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()


class Tx:
    """One transaction on a pooled DBAPI connection (:meth:`Database.begin`).

    Prepared statements (:mod:`tether.db.prepared`) run on :attr:`dbapi`
    directly; anything else goes through :meth:`execute`, which wraps the
    same DBAPI connection in a SQLAlchemy ``Connection`` the first time it
    is needed, so both share the transaction.  An SQLAlchemy connection per
    transaction (pool checkout with its fairy, the connection object with
    its event dispatch, begin and commit bookkeeping) cost about 60 µs in
    the running service, as much as the two statements of a typical
    transaction; a hot transaction here is a pool checkout, the statements
    and a commit.
    """

    __slots__ = ("_after", "_engine", "_fairy", "_sa", "dbapi", "dialect")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._fairy = engine.raw_connection()
        self._sa: Connection | None = None
        self._after: list[Callable[[], object]] | None = None
        self.dbapi: Any = self._fairy.dbapi_connection
        self.dialect: Dialect = engine.dialect

    def after_commit(self, work: Callable[[], object]) -> None:
        """Run ``work`` once this transaction has committed (never if it
        rolls back): what must not be seen before the change is durable,
        such as a notification."""
        if self._after is None:
            self._after = []
        self._after.append(work)

    def execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None
                ) -> Any:
        """``Connection.execute`` (its ``CursorResult``), in this transaction."""
        if self._sa is None:
            self._sa = Connection(self._engine, connection=self._fairy)
        return self._sa.execute(statement, parameters or {})

    def _end(self, commit: bool) -> None:
        holder: Any = self._sa if self._sa is not None and self._sa.in_transaction() \
            else self._fairy
        if commit:
            holder.commit()
        else:
            holder.rollback()

    def _release(self) -> None:
        (self._sa if self._sa is not None else self._fairy).close()


class _Begin:
    __slots__ = ("_engine", "_tx")

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __enter__(self) -> Tx:
        self._tx = Tx(self._engine)
        return self._tx

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        tx = self._tx
        try:
            tx._end(commit=exc_type is None)
        except BaseException:
            with contextlib.suppress(Exception):
                tx._end(commit=False)
            raise
        finally:
            tx._release()
        if exc_type is None and tx._after:
            for work in tx._after:
                work()


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
