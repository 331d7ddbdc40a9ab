"""Every (event, state) pair of every table: allowed ones lead where the table
says, the others are refused with a message naming the current state."""

from __future__ import annotations

import itertools

import pytest

from tether.states import attachment, volume
from tether.states.machine import InvalidTransition, StateMachine, t

MACHINES = {"volume": volume.MACHINE, "attachment": attachment.MACHINE}


def _cases() -> list[tuple[str, str, str]]:
    return [(name, event, state) for name, m in MACHINES.items()
            for event, state in itertools.product(sorted(m.events), sorted(m.states))]


@pytest.mark.parametrize(("machine", "event", "state"), _cases())
def test_every_event_from_every_state(machine: str, event: str, state: str) -> None:
    m = MACHINES[machine]
    tr = m.transition(event)
    targets = sorted(tr.targets)
    if state in tr.sources:
        for target in targets:
            explicit = target if len(targets) > 1 else None
            assert m.check(event, state, "r1", explicit) == target
    else:
        with pytest.raises(InvalidTransition) as err:
            m.check(event, state, "r1", targets[0] if len(targets) > 1 else None)
        assert f"but it is {state}" in str(err.value)
        assert err.value.current == state


def test_volume_table_is_the_documented_flow() -> None:
    m = volume.MACHINE
    assert m.check("reserve", "available", "v") == "reserved"
    assert m.check("attach_start", "reserved", "v") == "attaching"
    assert m.check("attach_complete", "attaching", "v") == "in-use"
    assert m.check("begin_detaching", "in-use", "v") == "detaching"
    assert m.check("roll_detaching", "detaching", "v") == "in-use"
    assert m.check("settle", "detaching", "v", "available") == "available"
    assert m.check("delete", "available", "v") == "deleting"


def test_delete_refused_while_attached_names_state() -> None:
    with pytest.raises(InvalidTransition, match="must be available or error or "
                       "error_deleting to delete, but it is in-use"):
        volume.MACHINE.check("delete", "in-use", "v1")


def test_multiattach_reserve_accepts_in_use_but_plain_reserve_does_not() -> None:
    assert volume.MACHINE.check("reserve_multiattach", "in-use", "v") == "reserved"
    with pytest.raises(InvalidTransition):
        volume.MACHINE.check("reserve", "in-use", "v")


@pytest.mark.parametrize(("remaining", "status"), [
    ([], "available"),
    (["attached"], "in-use"),
    (["attached", "reserved"], "in-use"),
    (["attaching"], "attaching"),
    (["reserved"], "reserved"),
    (["error_attaching"], "reserved"),
])
def test_settled_status(remaining: list[str], status: str) -> None:
    assert volume.settled_status(remaining) == status


def test_settle_target_must_be_listed() -> None:
    with pytest.raises(ValueError, match="cannot lead to"):
        volume.MACHINE.check("settle", "in-use", "v", "deleting")


def test_multi_target_event_needs_explicit_target() -> None:
    with pytest.raises(ValueError, match="explicit target"):
        volume.MACHINE.check("settle", "in-use", "v")


def test_table_rejects_unknown_states_and_duplicates() -> None:
    with pytest.raises(ValueError, match="unknown states"):
        StateMachine("X", ["a"], [t("go", ["a"], "b")])
    with pytest.raises(ValueError, match="defined twice"):
        StateMachine("X", ["a", "b"], [t("go", ["a"], "b"), t("go", ["b"], "a")])
    with pytest.raises(ValueError, match="no event"):
        volume.MACHINE.transition("fly")
