"""The one way a state changes: :func:`apply`.

It checks the event against the resource's transition table, then writes it
with one conditional UPDATE whose WHERE clause is the event's sources (and
whatever else the caller expects, an operation's owner say).  If the row
moved in between, the event is checked again against what the row holds now,
so the refusal names the real current state: two requests racing on one
volume or one server cannot both win, and the loser is told why.

The side repositories (``tether.compute.repository``,
``tether.volume.repository``) wrap it with what their side adds to a
transition: the operation step written in the same transaction, the
notification sent once it commits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from tether.db.api import Tx
from tether.db.models import utcnow
from tether.db.records import Gateway
from tether.exceptions import Conflict
from tether.states.machine import StateMachine, Value

R = TypeVar("R")


def state_of(machine: StateMachine, record: object) -> dict[str, Value]:
    return {c: getattr(record, c) for c in machine.columns}


def apply(c: Tx, machine: StateMachine, gateway: Gateway[R], record: R, event: str, *,
          to: Mapping[str, Value] | None = None, values: Mapping[str, Any] | None = None,
          expect: Mapping[str, Any] | None = None) -> R:
    """Apply ``event`` to ``record``'s row in ``c``; the record as the row now
    is.  ``to``: the target of a column the event may set to several values;
    ``values``: other columns written with the transition; ``expect``: other
    columns the row must still hold (a value, or a collection of values).

    Raises :class:`~tether.states.machine.InvalidTransition` when the table
    refuses the event (for the row as it is now), :class:`Conflict` when the
    row changed in a way the table does not explain (``expect`` failed)."""
    key = getattr(record, gateway.pk_name)
    name = f"{machine.resource} {key}"
    new = machine.check(event, state_of(machine, record), str(key), to)
    written = {**new, **(values or {})}
    for column in gateway.stamped:  # updated_at: in the record returned too
        written.setdefault(column, utcnow())
    expected: dict[str, Any] = dict(machine.sources(event))
    expected.update(expect or {})
    if not gateway.update(c, key, written, expected):
        now = gateway.get(c, key)
        if now is None:
            raise Conflict(f"{name} was deleted concurrently.")
        machine.check(event, state_of(machine, now), str(key), to)
        raise Conflict(f"{name} changed concurrently; retry the request.")
    return dataclasses.replace(record, **written)  # type: ignore[type-var]


def apply_to(c: Tx, machine: StateMachine, gateway: Gateway[R], key: Any, event: str, *,
             values: Mapping[str, Any] | None = None,
             expect: Mapping[str, Any] | None = None) -> None:
    """:func:`apply` to a row whose current state the caller has not read
    (an event with one fixed target): the conditional UPDATE on the event's
    sources is the table's check; only when it changes nothing is the row
    read, to say why.  One statement instead of two on the hot path."""
    tr = machine.transition(event)
    written: dict[str, Any] = {}
    for column, options in tr.targets.items():
        (written[column],) = options
    written.update(values or {})
    expected: dict[str, Any] = dict(tr.sources)
    expected.update(expect or {})
    if gateway.update(c, key, written, expected):
        return
    now = gateway.get(c, key)
    if now is None:
        raise Conflict(f"{machine.resource} {key} was deleted concurrently.")
    machine.check(event, state_of(machine, now), str(key))
    raise Conflict(f"{machine.resource} {key} changed concurrently; retry the request.")
