"""Every (event, state) pair of every table: allowed ones lead where the table
says, the others are refused with a message naming the current state."""

from __future__ import annotations

import itertools

import pytest

from tether.states import attachment, operation, server, volume
from tether.states.machine import InvalidTransition, StateMachine, t, tr

MACHINES = {"volume": volume.MACHINE, "attachment": attachment.MACHINE,
            "server": server.MACHINE, "operation": operation.MACHINE,
            "step": operation.STEP}


def _states(m: StateMachine) -> list[dict[str, str | None]]:
    columns = list(m.columns)
    return [dict(zip(columns, values, strict=True))
            for values in itertools.product(*(sorted(m.values[c], key=str) for c in columns))]


@pytest.mark.parametrize("name", sorted(MACHINES))
def test_every_event_from_every_state(name: str) -> None:
    m = MACHINES[name]
    for event, state in itertools.product(sorted(m.events), _states(m)):
        tr_ = m.transition(event)
        choices = [dict(zip(tr_.targets, values, strict=True)) for values in itertools.product(
            *(sorted(v, key=str) for v in tr_.targets.values()))]
        allowed = all(state[c] in vals for c, vals in tr_.sources.items())
        assert m.allows(event, state) == allowed
        for choice in choices:
            to = {c: v for c, v in choice.items() if len(tr_.targets[c]) > 1}
            if allowed:
                assert m.check(event, state, "r1", to) == choice
                continue
            with pytest.raises(InvalidTransition) as err:
                m.check(event, state, "r1", to)
            shown = "none" if err.value.current is None else err.value.current
            assert f"is {shown}." in str(err.value)
            assert err.value.current == state[err.value.column]
        if not tr_.targets:  # a guard
            assert (m.check(event, state, "r1") == {}) if allowed else True


def test_volume_table_is_the_documented_flow() -> None:
    m = volume.MACHINE

    def go(event: str, status: str, to: str | None = None) -> str | None:
        return m.check(event, {"status": status}, "v", {"status": to} if to else None)[
            "status"]

    assert go("reserve", "available") == "reserved"
    assert go("attach_start", "reserved") == "attaching"
    assert go("attach_complete", "attaching") == "in-use"
    assert go("begin_detaching", "in-use") == "detaching"
    assert go("roll_detaching", "detaching") == "in-use"
    assert go("settle", "detaching", "available") == "available"
    assert go("delete", "available") == "deleting"
    assert go("delete_done", "deleting") == "deleted"
    assert go("reset", "creating", "error") == "error"


def test_delete_refused_while_attached_names_state() -> None:
    with pytest.raises(InvalidTransition, match="must be available or error or "
                       "error_deleting to delete, but it is in-use"):
        volume.MACHINE.check("delete", {"status": "in-use"}, "v1")


def test_server_refusals_name_the_column_that_refused() -> None:
    m = server.MACHINE
    with pytest.raises(InvalidTransition, match="must be active or error to stop, but it "
                       "is stopped") as err:
        m.check("stop", {"vm_state": "stopped", "task_state": None}, "s1")
    assert err.value.column == "vm_state"
    with pytest.raises(InvalidTransition, match="must have task_state none to detach "
                       "volume, but its task_state is deleting") as err:
        m.check("detach_volume", {"vm_state": "active", "task_state": "deleting"}, "s1")
    assert err.value.column == "task_state" and err.value.current == "deleting"


def test_server_tasks_begin_idle_and_end_cleared() -> None:
    m = server.MACHINE
    idle = {"vm_state": "active", "task_state": None}
    assert m.check("stop", idle, "s") == {"task_state": "powering-off"}
    assert m.check("stop_done", {"vm_state": "active", "task_state": "powering-off"}, "s") == {
        "vm_state": "stopped", "task_state": None}
    assert m.check("stop_fail", {"vm_state": "active", "task_state": "powering-off"}, "s") == {
        "task_state": None}
    # a delete takes a server whatever it is doing, but only once
    assert m.check("delete", {"vm_state": "building", "task_state": "spawning"}, "s") == {
        "task_state": "deleting"}
    with pytest.raises(InvalidTransition):
        m.check("delete", {"vm_state": "active", "task_state": "deleting"}, "s")
    # volume operations are guards: they change nothing
    assert m.check("attach_volume", idle, "s") == {}


def test_operation_statuses() -> None:
    m = operation.MACHINE
    assert m.check("queue", {"status": "api"}, "1") == {"status": "queued"}
    assert m.check("claim", {"status": "queued"}, "1") == {"status": "running"}
    assert m.check("claim", {"status": "running"}, "1") == {"status": "running"}
    for done in ("succeeded", "failed"):
        with pytest.raises(InvalidTransition):
            m.check("claim", {"status": done}, "1")


def test_multiattach_reserve_accepts_in_use_but_plain_reserve_does_not() -> None:
    assert volume.MACHINE.check("reserve_multiattach", {"status": "in-use"}, "v") == {
        "status": "reserved"}
    with pytest.raises(InvalidTransition):
        volume.MACHINE.check("reserve", {"status": "in-use"}, "v")


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
        volume.MACHINE.check("settle", {"status": "in-use"}, "v", {"status": "deleting"})


def test_multi_target_event_needs_explicit_target() -> None:
    with pytest.raises(ValueError, match="explicit target"):
        volume.MACHINE.check("settle", {"status": "in-use"}, "v")


def test_table_rejects_unknown_states_columns_and_duplicates() -> None:
    with pytest.raises(ValueError, match="unknown states"):
        StateMachine("X", {"s": ["a"]}, [t("go", ["a"], "b")])
    with pytest.raises(ValueError, match="unknown column"):
        StateMachine("X", {"s": ["a"]}, [tr("go", {"other": ["a"]})])
    with pytest.raises(ValueError, match="defined twice"):
        StateMachine("X", {"s": ["a", "b"]}, [t("go", ["a"], "b"), t("go", ["b"], "a")])
    with pytest.raises(ValueError, match="no event"):
        volume.MACHINE.transition("fly")
