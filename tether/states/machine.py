"""A state machine is a table of named events.  An event names, for each of
the resource's state columns it cares about, the values the column must hold
(its sources) and what the event sets it to (its targets).  A volume has one
state column (``status``); a server has two (``vm_state`` and ``task_state``,
as in Nova), and an event such as ``stop`` asks for both: an active server
with no task.

The API checks a request against the table before anything is sent; the
worker applies the same event with one conditional UPDATE whose WHERE clause
is the event's sources (:func:`tether.db.transitions.apply`), so two racing
requests cannot both win.  An event without targets changes nothing: it is a
guard, applied to make a check atomic with the rest of a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Value = str | None
MAIN = ""  # the machine's first column, in tables written with t()


@dataclass(frozen=True)
class Transition:
    event: str
    sources: Mapping[str, frozenset[Value]]  # column -> the values it may hold
    targets: Mapping[str, frozenset[Value]]  # column -> the value(s) it may become


def t(event: str, sources: Iterable[Value], *targets: Value) -> Transition:
    """A transition on the machine's main column."""
    return Transition(event, {MAIN: frozenset(sources)},
                      {MAIN: frozenset(targets)} if targets else {})


def tr(event: str, sources: Mapping[str, Iterable[Value]],
       targets: Mapping[str, Value | Iterable[Value]] | None = None) -> Transition:
    """A transition on named columns; a target given as one value is fixed."""
    def values(v: Value | Iterable[Value]) -> frozenset[Value]:
        return frozenset([v]) if v is None or isinstance(v, str) else frozenset(v)

    return Transition(event, {c: frozenset(v) for c, v in sources.items()},
                      {c: values(v) for c, v in (targets or {}).items()})


def _shown(value: Value) -> str:
    return "none" if value is None else value


class InvalidTransition(Exception):
    """``event`` is not allowed while ``column`` holds ``current``."""

    def __init__(self, resource: str, resource_id: str, event: str, column: str,
                 main: bool, current: Value, allowed: frozenset[Value]) -> None:
        wanted = " or ".join(sorted(_shown(v) for v in allowed)) or "(none)"
        action = event.replace("_", " ")
        if main:
            text = f"must be {wanted} to {action}, but it is {_shown(current)}."
        else:
            text = (f"must have {column} {wanted} to {action}, but its {column} is "
                    f"{_shown(current)}.")
        super().__init__(f"{resource} {resource_id} {text}")
        self.resource = resource
        self.resource_id = resource_id
        self.event = event
        self.column = column
        self.current = current
        self.allowed = allowed


class StateMachine:
    def __init__(self, resource: str, columns: Mapping[str, Iterable[Value]],
                 transitions: Iterable[Transition]) -> None:
        """``columns``: each state column and the values it can hold, the
        main one (the resource's "status") first."""
        self.resource = resource
        self.columns = tuple(columns)
        self.main = self.columns[0]
        self.values = {c: frozenset(v) for c, v in columns.items()}
        self._table: dict[str, Transition] = {}
        for raw in transitions:
            tr_ = Transition(raw.event, self._named(raw.sources), self._named(raw.targets))
            for part in (tr_.sources, tr_.targets):
                for column, vals in part.items():
                    if column not in self.values:
                        raise ValueError(f"{resource}: unknown column {column} in {raw.event}")
                    unknown = vals - self.values[column]
                    if unknown:
                        raise ValueError(f"{resource}: unknown states "
                                         f"{sorted(map(_shown, unknown))} in {raw.event}")
            if tr_.event in self._table:
                raise ValueError(f"{resource}: event {tr_.event} defined twice")
            self._table[tr_.event] = tr_

    def _named(self, part: Mapping[str, frozenset[Value]]) -> dict[str, frozenset[Value]]:
        return {(self.main if c == MAIN else c): v for c, v in part.items()}

    @property
    def states(self) -> frozenset[Value]:
        """The values of the main column."""
        return self.values[self.main]

    @property
    def events(self) -> dict[str, Transition]:
        return dict(self._table)

    def transition(self, event: str) -> Transition:
        try:
            return self._table[event]
        except KeyError:
            raise ValueError(f"{self.resource}: no event {event!r}") from None

    def sources(self, event: str) -> Mapping[str, frozenset[Value]]:
        return self.transition(event).sources

    def allows(self, event: str, state: Mapping[str, Value]) -> bool:
        return all(state.get(c) in allowed for c, allowed in self.sources(event).items())

    def check(self, event: str, state: Mapping[str, Value], resource_id: str,
              to: Mapping[str, Value] | None = None) -> dict[str, Value]:
        """The columns ``event`` sets from ``state`` (a mapping of the state
        columns' current values), or raise :class:`InvalidTransition`.

        A column an event may set to several values needs its choice in
        ``to`` (computed by the caller, e.g. from the attachments that remain).
        """
        tr_ = self.transition(event)
        for column in sorted(tr_.sources, key=lambda c: c != self.main):
            allowed = tr_.sources[column]
            if state.get(column) not in allowed:
                raise InvalidTransition(self.resource, resource_id, event, column,
                                        column == self.main, state.get(column), allowed)
        new: dict[str, Value] = {}
        for column, options in tr_.targets.items():
            if len(options) == 1:
                (new[column],) = options
                if to and column in to and to[column] != new[column]:
                    raise ValueError(f"{self.resource}: {event} cannot lead to {to[column]}")
                continue
            if not to or column not in to:
                raise ValueError(f"{self.resource}: event {event} needs an explicit target "
                                 f"for {column}")
            if to[column] not in options:
                raise ValueError(f"{self.resource}: {event} cannot lead to {to[column]}")
            new[column] = to[column]
        return new
