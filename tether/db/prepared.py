"""Core statements compiled once per database dialect and run on the DBAPI
cursor of the transaction's connection.

SQLAlchemy's execute path rebuilds a statement's cache key, looks up its
compiled form, builds an execution context and a result object on every
call: about 50 µs per statement here, where the database itself (SQLite)
takes under 10.  An attach or a detach runs some thirty statements on the
request path, so the hot ones are prepared: compiled by SQLAlchemy once per
dialect (the SQL text and its parameter order), then executed directly,
with the few conversions SQLAlchemy's types would do — JSON to and from
text, SQLite's text datetimes, integer booleans — done here.

Statements are still written with SQLAlchemy Core against the models'
tables, so they stay portable (SQLite, PostgreSQL, MariaDB; the same tests
run on all three), and they run in the caller's transaction
(``Database.begin()``, a :class:`~tether.db.api.Tx`): same connection, same
commit or rollback.  Only statements whose parameters are all known when
compiled can be prepared: a list bound at execution time (an expanding
``IN``) must go through ``Tx.execute`` (SQLAlchemy).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.sql import ClauseElement, sqltypes
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.selectable import Select
from sqlalchemy.types import TypeEngine

from tether.db.api import Tx

Convert = Callable[[Any], Any]


def _json_out(value: Any) -> Any:
    return json.dumps(value)


def _sqlite_datetime_out(value: Any) -> Any:
    # SQLAlchemy's storage format for DATETIME on SQLite (always microseconds,
    # so stored values compare correctly as text)
    return value.isoformat(" ", "microseconds") if value is not None else None


def _json_in(value: Any) -> Any:
    return json.loads(value) if isinstance(value, (str, bytes)) else value


def _datetime_in(value: Any) -> Any:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


def _bool_in(value: Any) -> Any:
    return bool(value) if value is not None else None


def _to_db(type_: TypeEngine[Any], dialect: Dialect) -> Convert | None:
    if isinstance(type_, sqltypes.JSON):
        return _json_out
    if isinstance(type_, sqltypes.DateTime) and dialect.name == "sqlite":
        return _sqlite_datetime_out
    return None


def _from_db(type_: TypeEngine[Any]) -> Convert | None:
    if isinstance(type_, sqltypes.JSON):
        return _json_in
    if isinstance(type_, sqltypes.DateTime):
        return _datetime_in
    if isinstance(type_, sqltypes.Boolean):
        return _bool_in
    return None


@dataclass(frozen=True)
class _Plan:
    sql: str
    order: tuple[str, ...] | None  # positional parameter order, None for named
    to_db: dict[str, Convert]
    fixed: dict[str, Any]  # parameters whose values are part of the statement
    from_db: tuple[tuple[int, Convert], ...]  # (column index, conversion) where needed

    def parameters(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values = {**self.fixed, **params}
        for name, convert in self.to_db.items():
            if name in values:
                values[name] = convert(values[name])
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        if not self.from_db:
            return tuple(raw)
        values = list(raw)
        for i, convert in self.from_db:
            values[i] = convert(values[i])
        return tuple(values)


class Prepared:
    """One statement, prepared for each dialect it runs on."""

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._plans: dict[str, _Plan] = {}
        self._guard = threading.Lock()

    def _plan(self, dialect: Dialect) -> _Plan:
        plan = self._plans.get(dialect.name)
        if plan is None:
            plan = self._compile(dialect)
            with self._guard:
                self._plans[dialect.name] = plan
        return plan

    def _compile(self, dialect: Dialect) -> _Plan:
        compiled = self.stmt.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        binds = compiled.binds
        if any(b.expanding for b in binds.values()):
            raise ValueError("a statement with a list bound at execution time cannot be "
                             "prepared; run it through SQLAlchemy")
        to_db = {name: conv for name, b in binds.items()
                 if (conv := _to_db(b.type, dialect)) is not None}
        fixed = {name: b.value for name, b in binds.items()
                 if not b.required and b.callable is None}
        if isinstance(self.stmt, Select):
            types = [c.type for c in self.stmt.selected_columns]
        elif isinstance(self.stmt, UpdateBase):
            types = [d["type"] for d in self.stmt.returning_column_descriptions]
        else:
            types = []
        order = tuple(compiled.positiontup or ()) if dialect.positional else None
        from_db = tuple((i, c) for i, t in enumerate(types) if (c := _from_db(t)) is not None)
        return _Plan(compiled.string, order, to_db, fixed, from_db)

    def _cursor(self, conn: Tx) -> tuple[Any, _Plan]:
        return conn.dbapi.cursor(), self._plan(conn.dialect)

    def rows(self, conn: Tx, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor, plan = self._cursor(conn)
        try:
            cursor.execute(plan.sql, plan.parameters(params))
            return [plan.row(r) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def first(self, conn: Tx, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        cursor, plan = self._cursor(conn)
        try:
            cursor.execute(plan.sql, plan.parameters(params))
            raw = cursor.fetchone()
            return plan.row(raw) if raw is not None else None
        finally:
            cursor.close()

    def run(self, conn: Tx, params: Mapping[str, Any]) -> int:
        """Execute; the number of rows it changed."""
        cursor, plan = self._cursor(conn)
        try:
            cursor.execute(plan.sql, plan.parameters(params))
            return int(cursor.rowcount)
        finally:
            cursor.close()

    def run_many(self, conn: Tx, params: Sequence[Mapping[str, Any]]) -> None:
        cursor, plan = self._cursor(conn)
        try:
            cursor.executemany(plan.sql, [plan.parameters(p) for p in params])
        finally:
            cursor.close()
