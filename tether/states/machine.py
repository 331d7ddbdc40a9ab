"""A state machine is a table of named events, each with allowed source and
target states.  The API checks a request against the table before anything is
sent; the worker applies the same event in one conditional database update,
so two racing requests cannot both win.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Transition:
    event: str
    sources: frozenset[str]
    targets: frozenset[str]


def t(event: str, sources: Iterable[str], *targets: str) -> Transition:
    return Transition(event, frozenset(sources), frozenset(targets))


class InvalidTransition(Exception):
    """``event`` is not allowed for a resource in state ``current``."""

    def __init__(
        self, resource: str, resource_id: str, event: str, current: str,
        allowed: frozenset[str],
    ) -> None:
        wanted = " or ".join(sorted(allowed)) or "(none)"
        super().__init__(
            f"{resource} {resource_id} must be {wanted} to {event.replace('_', ' ')}, "
            f"but it is {current}."
        )
        self.resource = resource
        self.resource_id = resource_id
        self.event = event
        self.current = current
        self.allowed = allowed


class StateMachine:
    def __init__(self, resource: str, states: Iterable[str],
                 transitions: Iterable[Transition]) -> None:
        self.resource = resource
        self.states = frozenset(states)
        self._table: dict[str, Transition] = {}
        for tr in transitions:
            unknown = (tr.sources | tr.targets) - self.states
            if unknown:
                raise ValueError(f"{resource}: unknown states {sorted(unknown)} in {tr.event}")
            if tr.event in self._table:
                raise ValueError(f"{resource}: event {tr.event} defined twice")
            self._table[tr.event] = tr

    @property
    def events(self) -> dict[str, Transition]:
        return dict(self._table)

    def transition(self, event: str) -> Transition:
        try:
            return self._table[event]
        except KeyError:
            raise ValueError(f"{self.resource}: no event {event!r}") from None

    def sources(self, event: str) -> frozenset[str]:
        return self.transition(event).sources

    def check(self, event: str, current: str, resource_id: str,
              target: str | None = None) -> str:
        """Return the state ``event`` leads to from ``current``, or raise.

        Events with several possible targets need ``target`` (computed by the
        caller, e.g. from the attachments that remain) and check it is allowed.
        """
        tr = self.transition(event)
        if current not in tr.sources:
            raise InvalidTransition(self.resource, resource_id, event, current, tr.sources)
        if target is None:
            if len(tr.targets) != 1:
                raise ValueError(f"{self.resource}: event {event} needs an explicit target")
            (target,) = tr.targets
        elif target not in tr.targets:
            raise ValueError(f"{self.resource}: {event} cannot lead to {target}")
        return target
