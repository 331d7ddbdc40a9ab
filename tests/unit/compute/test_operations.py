"""Operations (instance actions) and their step events, written as the steps
happen; who owns an operation, and what a claim by someone else does."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import insert, select, update

from tether.compute.operations import ActionRef, Operations
from tether.compute.repository import ComputeRepository
from tether.context import RequestContext
from tether.db import migrate, models
from tether.db.api import Database, Tx
from tether.exceptions import Conflict
from tether.states import operation as op_states


@pytest.fixture
def db() -> Database:
    database = Database("sqlite://")
    migrate.upgrade(database)
    with database.engine.begin() as c:
        c.execute(insert(models.Instance), {
            "uuid": "i1", "name": "s", "project_id": "p", "user_id": "u", "flavor_id": "1",
            "vcpus": 1, "memory_mb": 64, "vm_state": "active"})
    return database


def _events(db: Database) -> list[tuple[str, str | None]]:
    with db.engine.connect() as c:
        return [(r.event, r.result) for r in c.execute(
            select(models.InstanceActionEvent).order_by(models.InstanceActionEvent.id))]


def _commits(db: Database) -> list[int]:
    """Commits from now on, as SQLite runs them (hot transactions bypass
    SQLAlchemy's events)."""
    counter = [0]
    raw = db.engine.raw_connection()  # the in-memory database's one connection
    raw.dbapi_connection.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: counter.__setitem__(0, counter[0] + (sql == "COMMIT")))
    raw.close()
    return counter


def _ops(db: Database, host: str = "h", owner: str = "me") -> Operations:
    return Operations(ComputeRepository(db), host, owner)


def _action(ops: Operations) -> ActionRef:
    """An operation as the API records it: with its first step, done."""
    ctx = RequestContext(user_id="u", project_id="p")

    def write(c: Tx) -> ActionRef:
        row = ops.new(c, ctx, "i1", "attach_volume", status=op_states.API, resource_id="v1")
        ops.step_done(c, row.id, "a1:compute_api", row.start_time)
        return ActionRef.of(row)

    return ops.write(write)


def test_an_operation_and_its_first_step_are_one_transaction(db: Database) -> None:
    commits = _commits(db)
    _action(_ops(db))
    assert commits[0] == 1
    assert _events(db) == [("a1:compute_api", "Success")]


def test_unbatched_steps_write_start_and_finish_each(db: Database) -> None:
    ops = _ops(db)
    action = _action(ops)
    commits = _commits(db)
    with ops.step(action, "a1.1"):
        assert _events(db)[-1] == ("a1.1", None)  # visible while it runs
    assert _events(db)[-1] == ("a1.1", "Success")
    assert commits[0] == 2


def test_batched_finish_rides_on_the_next_write(db: Database) -> None:
    ops = _ops(db)
    action = _action(ops)
    commits = _commits(db)
    with ops.batched():
        with ops.step(action, "a1.1"):
            pass
        assert _events(db)[-1] == ("a1.1", None)  # its finish waits for the next write
        with ops.step(action, "a2"):
            assert _events(db)[-2:] == [("a1.1", "Success"), ("a2", None)]
        ops.finish_action(action)
        assert _events(db)[-1] == ("a2", "Success")
    assert commits[0] == 3  # two starts and the action's finish


def test_batched_failure_is_written_at_once_and_pending_at_the_end(db: Database) -> None:
    ops = _ops(db)
    action = _action(ops)
    with pytest.raises(RuntimeError), ops.batched():
        with ops.step(action, "s1.1"):
            pass
        with ops.step(action, "s1.1.1"):
            raise RuntimeError("guest refused")
    assert _events(db)[1:] == [("s1.1", "Success"), ("s1.1.1", "Error")]
    with ops.batched(), ops.step(action, "s2"):
        pass
    assert _events(db)[-1] == ("s2", "Success")  # written when the block ended


def _instance_name(db: Database) -> str:
    with db.engine.connect() as c:
        return str(c.execute(select(models.Instance.name)).scalar_one())


def _rename(name: str) -> Callable[[Tx], None]:
    def change(conn: Tx) -> None:
        conn.execute(update(models.Instance).values(name=name))
    return change


def test_a_steps_first_change_and_an_actions_last_share_their_transactions(
        db: Database) -> None:
    ops = _ops(db)
    action = _action(ops)
    commits = _commits(db)
    with ops.step(action, "s1.2", first=_rename("during")):
        assert (_instance_name(db), _events(db)[-1]) == ("during", ("s1.2", None))
    ops.finish_action(action, last=_rename("after"))
    assert _instance_name(db) == "after"
    assert commits[0] == 3  # start+first, finish, finish_action+last

    def broken(conn: Tx) -> None:
        _rename("half")(conn)
        raise RuntimeError("first failed")

    with pytest.raises(RuntimeError), ops.step(action, "s9", first=broken):
        pass
    assert _instance_name(db) == "after"  # nothing of it stayed
    assert "s9" not in [e for e, _ in _events(db)]


def _queued(db: Database) -> int:
    api = _ops(db, host=None, owner="api-1")  # type: ignore[arg-type]
    ctx = RequestContext(user_id="u", project_id="p")
    with api.repo.begin() as c:
        row = api.new(c, ctx, "i1", "detach_volume", status=op_states.API)
        api.queue(c, row)
    return row.id


def test_a_claimed_operation_is_its_claimers_alone(db: Database) -> None:
    action_id = _queued(db)
    first, second = _ops(db, owner="host-1"), _ops(db, owner="host-2")
    row = first.get(action_id)
    assert row is not None and (row.status, row.owner) == ("queued", None)
    with first.repo.begin() as c:
        mine = first.claim(c, row)
    assert mine is not None and (mine.status, mine.owner) == ("running", "host-1")
    with second.repo.begin() as c:  # a second message, or a recovery that read it queued
        assert second.claim(c, row) is None
    # the owner finishes it; nobody else can
    with pytest.raises(Conflict):
        second.finish_action(ActionRef.of(mine))
    first.finish_action(ActionRef.of(mine))
    done = first.get(action_id)
    assert done is not None and done.status == "succeeded" and done.finish_time is not None


def test_a_running_operation_of_a_dead_owner_can_be_taken(db: Database) -> None:
    action_id = _queued(db)
    dead, alive = _ops(db, owner="dead"), _ops(db, owner="alive")
    with dead.repo.begin() as c:
        dead.claim(c, dead.get(action_id))  # type: ignore[arg-type]
    with alive.repo.begin() as c:
        row = alive.claim(c, alive.get(action_id))  # type: ignore[arg-type]
    assert row is not None and row.owner == "alive"
    with pytest.raises(Conflict):  # the dead one's thread, if it was only slow, cannot finish
        dead.finish_action(ActionRef.of(row), "Error")


def test_api_steps_taken_over_and_a_cast_taken_back(db: Database) -> None:
    api1, api2 = _ops(db, owner="api-1"), _ops(db, owner="api-2")
    ctx = RequestContext(user_id="u", project_id="p")
    with api1.repo.begin() as c:
        row = api1.new(c, ctx, "i1", "attach_volume", status=op_states.API)
    assert row.owner == "api-1"
    taken = api2.take_over(row)
    assert taken is not None and taken.owner == "api-2"
    assert api1.take_over(row) is None  # it moved since api-1 read it
    with api2.repo.begin() as c:
        queued = api2.queue(c, taken)
    back = api2.unqueue(queued)
    assert back is not None and (back.status, back.owner) == ("api", "api-2")
    assert api2.unqueue(queued) is None  # not queued any more
