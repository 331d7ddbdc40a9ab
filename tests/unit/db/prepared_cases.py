"""What prepared statements and the state primitives built on them must do on
every database Tether runs on; run on SQLite by the unit tests and on
PostgreSQL and MariaDB by the integration tests
(tests/integration/test_databases.py)."""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest
from sqlalchemy import bindparam, select, update

from tether.compute.operations import ActionRef, Operations
from tether.compute.repository import ComputeRepository, DeviceTaken
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database
from tether.db.prepared import Prepared
from tether.db.records import ATTACHMENTS, BDMS, INSTANCES, VOLUMES, by, one_of
from tether.exceptions import Conflict
from tether.states import server as srv_states
from tether.states.machine import InvalidTransition
from tether.volume.repository import VolumeRepository

_V = VOLUMES.columns
_GET = Prepared(select(_V["meta"], _V["created_at"], _V["multiattach"], _V["updated_at"],
                       _V["size"]).where(_V["id"] == bindparam("id")))
_SET = Prepared(update(VOLUMES.table).where(
    _V["id"] == bindparam("id"), one_of(_V["status"], ["available", "in-use"])).values(
    {"metadata": bindparam("meta"), "updated_at": bindparam("at"),
     "multiattach": bindparam("multi"), "status": bindparam("status")}))


def _volume(db: Database) -> str:
    with db.begin() as c:
        return VOLUMES.insert(c, {"id": str(uuid.uuid4()), "project_id": "p",
                                  "user_id": "u", "size": 3, "status": "available",
                                  "meta": {"a": [1, "x"]}}).id


def values_round_trip(db: Database) -> None:
    """JSON, datetimes and booleans come back as SQLAlchemy's own statements
    wrote them, and as SQLAlchemy reads what the prepared ones write."""
    vid = _volume(db)
    with db.begin() as c:
        meta, created, multi, updated, size = _GET.first(c, {"id": vid}) or ()
    assert (meta, multi, updated, size) == ({"a": [1, "x"]}, False, None, 3)
    assert isinstance(created, dt.datetime)
    at = dt.datetime(2026, 11, 25, 6, 0, 0)  # no microseconds: must still sort right
    with db.begin() as c:
        assert _SET.run(c, {"id": vid, "meta": None, "at": at, "multi": True,
                            "status": "in-use"}) == 1
    with db.begin() as c:
        assert _GET.first(c, {"id": vid}) == (None, created, True, at, 3)
        vol = c.execute(select(VOLUMES.table).where(_V["id"] == vid)).one()
    assert (vol.multiattach, vol.updated_at, vol.metadata) == (True, at, None)
    with db.begin() as c:  # stored text compares as time does
        later = c.execute(select(_V["id"]).where(
            _V["updated_at"] >= at - dt.timedelta(microseconds=1))).all()
    assert [r[0] for r in later] == [vid]


def fixed_states_and_rowcount(db: Database) -> None:
    vid = _volume(db)
    with db.begin() as c:
        assert _SET.run(c, {"id": vid, "meta": {}, "at": None, "multi": False,
                            "status": "deleting"}) == 1
        # 'deleting' is not one of the statement's states
        assert _SET.run(c, {"id": vid, "meta": {}, "at": None, "multi": False,
                            "status": "x"}) == 0


def takes_part_in_the_transaction(db: Database) -> None:
    vid = _volume(db)
    with pytest.raises(RuntimeError), db.begin() as c:
        _SET.run(c, {"id": vid, "meta": {"lost": 1}, "at": None, "multi": False,
                     "status": "in-use"})
        raise RuntimeError("rolled back")
    with db.begin() as c:
        row = _GET.first(c, {"id": vid})
    assert row is not None and row[0] == {"a": [1, "x"]}


def many_rows(db: Database) -> None:
    ids = [_volume(db) for _ in range(3)]
    with db.begin() as c:
        _SET.run_many(c, [{"id": i, "meta": {"n": n}, "at": None, "multi": False,
                           "status": "in-use"} for n, i in enumerate(ids)])
        got = [_GET.first(c, {"id": i}) for i in ids]
    assert [g[0] if g else None for g in got] == [{"n": 0}, {"n": 1}, {"n": 2}]


def operations_record_their_steps(db: Database) -> None:
    """Instance actions and events (prepared inserts with RETURNING)."""
    server = str(uuid.uuid4())
    with db.begin() as c:
        INSTANCES.insert(c, {"uuid": server, "name": "s", "project_id": "p", "user_id": "u",
                             "flavor_id": "1", "vcpus": 1, "memory_mb": 64,
                             "vm_state": "active", "meta": {}})
    ops = Operations(ComputeRepository(db), "host-a", owner="me")
    with db.begin() as c:
        row = ops.new(c, RequestContext(user_id="u", project_id="p"), server, "detach_volume",
                      status="api", resource_id="v1")
        ops.step_done(c, row.id, "s1:compute_api", row.start_time)
    action = ActionRef.of(row)
    with ops.batched():
        with ops.step(action, "s1.1:driver_detach"):
            pass
        with pytest.raises(RuntimeError), ops.step(action, "s2:host_disconnect"):
            raise RuntimeError("no")
        ops.finish_action(action, "Error")
    events = models.InstanceActionEvent
    with db.begin() as c:
        rows = c.execute(select(events.event, events.result, events.host,
                                events.finish_time).where(
            events.action_id == action.id).order_by(events.id)).all()
        finished = c.execute(select(models.InstanceAction.finish_time)).scalar_one()
    with db.begin() as c:  # the claim's read: the operation with its server, one statement
        got = ComputeRepository.action_and_server(c, action.id)
        assert got is not None and (got[0].id, got[1].uuid) == (action.id, server)
        assert got == (ComputeRepository.action(c, action.id), INSTANCES.get(c, server))
        assert ComputeRepository.action_and_server(c, 10**9) is None
    assert [r[:3] for r in rows] == [("s1:compute_api", "Success", "host-a"),
                                     ("s1.1:driver_detach", "Success", "host-a"),
                                     ("s2:host_disconnect", "Error", "host-a")]
    assert all(r.finish_time is not None for r in rows) and finished is not None


def gateway_insert_applies_defaults_and_returns_the_row(db: Database) -> None:
    """Inserts are prepared too: Python defaults filled in, database-assigned
    ids (autoincrement) come back."""
    server = str(uuid.uuid4())
    with db.begin() as c:
        inst = INSTANCES.insert(c, {"uuid": server, "name": "s", "project_id": "p",
                                    "user_id": "u", "flavor_id": "1", "vcpus": 1,
                                    "memory_mb": 64, "vm_state": "active"})
        first = BDMS.insert(c, {"uuid": str(uuid.uuid4()), "instance_uuid": server,
                                "volume_id": "v", "source_type": "volume",
                                "destination_type": "volume",
                                "connection_info": {"k": [1]}})
        second = BDMS.insert(c, {"uuid": str(uuid.uuid4()), "instance_uuid": server,
                                 "source_type": "volume", "destination_type": "volume"})
    assert (inst.meta, inst.locked, inst.power_state, inst.deleted) == ({}, False, 0, False)
    assert isinstance(inst.created_at, dt.datetime) and inst.updated_at is None
    assert second.id > first.id > 0
    assert (first.connection_info, first.delete_on_termination) == ({"k": [1]}, False)
    with db.begin() as c:
        again = BDMS.get(c, first.id)
    assert again == first


def prepared_and_sqlalchemy_share_one_transaction(db: Database) -> None:
    """A transaction may mix prepared statements with SQLAlchemy ones: they
    commit together and roll back together, and the connection goes back to
    the pool either way."""
    vid = _volume(db)
    checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
    at = models.utcnow()
    with pytest.raises(RuntimeError), db.begin() as c:
        _SET.run(c, {"id": vid, "meta": {"both": 1}, "at": at, "multi": False,
                     "status": "in-use"})
        c.execute(update(VOLUMES.table).where(_V["id"] == vid).values(size=99))
        raise RuntimeError("rolled back")
    with db.begin() as c:
        assert c.execute(select(_V["size"]).where(_V["id"] == vid)).scalar_one() == 3
        assert _GET.first(c, {"id": vid})[0] == {"a": [1, "x"]}  # type: ignore[index]
        c.execute(update(VOLUMES.table).where(_V["id"] == vid).values(size=7))
        _SET.run(c, {"id": vid, "meta": {"both": 2}, "at": at, "multi": False,
                     "status": "in-use"})
    with db.begin() as c:
        row = _GET.first(c, {"id": vid})
    assert row is not None and (row[0], row[4]) == ({"both": 2}, 7)
    assert db.engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


def a_refused_statement_rolls_back_and_returns_the_connection(db: Database) -> None:
    """The database refuses a prepared insert (a foreign key): nothing of the
    transaction stays and the connection goes back to the pool."""
    checked_out = db.engine.pool.checkedout()  # type: ignore[attr-defined]
    vid = _volume(db)
    with pytest.raises(Exception), db.begin() as c:  # noqa: B017 - each driver its own class
        VOLUMES.update(c, vid, {"size": 42})
        ATTACHMENTS.insert(c, {"id": str(uuid.uuid4()), "volume_id": "no-such-volume",
                               "attach_status": "reserved", "deleted": False})
    with db.begin() as c:
        assert ATTACHMENTS.all(c, by(ATTACHMENTS, ATTACHMENTS.columns["volume_id"]
                                     == "no-such-volume")) == []
        assert VOLUMES.get(c, vid).size == 3  # type: ignore[union-attr]
    assert db.engine.pool.checkedout() == checked_out  # type: ignore[attr-defined]


def _server(db: Database) -> str:
    server = str(uuid.uuid4())
    with db.begin() as c:
        INSTANCES.insert(c, {"uuid": server, "name": "s", "project_id": "p", "user_id": "u",
                             "flavor_id": "1", "vcpus": 1, "memory_mb": 64,
                             "vm_state": "active", "task_state": None, "meta": {}})
    return server


def _claim(repo: ComputeRepository, server: str, device: str, volume: str) -> int:
    with repo.begin() as c:
        return repo.claim_bdm(c, {"uuid": str(uuid.uuid4()), "instance_uuid": server,
                                  "volume_id": volume, "device_name": device,
                                  "source_type": "volume", "destination_type": "volume"}).id


def a_server_holds_a_device_name_and_a_volume_once(db: Database) -> None:
    """The unique indexes of live mappings: a second claim of a device or of
    a volume is refused (and the refused transaction leaves nothing); a
    released mapping frees both."""
    repo, server = ComputeRepository(db), _server(db)
    first = _claim(repo, server, "/dev/sdb", "v1")
    with pytest.raises(DeviceTaken):
        _claim(repo, server, "/dev/sdb", "v2")
    with pytest.raises(DeviceTaken):
        _claim(repo, server, "/dev/sdc", "v1")
    assert _claim(repo, _server(db), "/dev/sdb", "v1") > 0  # another server: fine
    with db.begin() as c:
        assert [b.id for b in repo.live_bdms(c, server)] == [first]
        bdm = repo.live_bdm(c, server, "v1")
        assert bdm is not None
        repo.release_bdm(c, bdm)
    again = _claim(repo, server, "/dev/sdb", "v1")
    with db.begin() as c:
        assert [b.id for b in repo.live_bdms(c, server)] == [again]
        assert repo.bdm(c, bdm.uuid).deleted  # type: ignore[union-attr]


def concurrent_claims_of_one_device_one_wins(db: Database) -> None:
    """Eight threads claim /dev/sdb of one server at once: exactly one wins,
    every other one is told the device is taken."""
    repo, server = ComputeRepository(db), _server(db)
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def claim(n: int) -> None:
        start.wait()
        try:
            _claim(repo, server, "/dev/sdb", f"v{n}")
            outcomes.append("won")
        except DeviceTaken:
            outcomes.append("taken")

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(outcomes) == ["taken"] * 7 + ["won"]


def apply_is_one_conditional_update(db: Database) -> None:
    """A transition checks the table, then changes the row only if it still
    is in a source state (NULL task_state included); a loser is told the
    state that beat it."""
    repo, server = ComputeRepository(db), _server(db)
    with db.begin() as c:
        inst = repo.server(c, server)
        assert inst is not None
        stopping = repo.apply(c, srv_states.MACHINE, inst, "stop")
    assert stopping.task_state == srv_states.POWERING_OFF
    with db.begin() as c, pytest.raises(InvalidTransition, match="task_state is powering-off"):
        repo.apply(c, srv_states.MACHINE, inst, "detach_volume")  # (a stale record)
    with db.begin() as c:
        done = repo.apply(c, srv_states.MACHINE, stopping, "stop_done")
        assert repo.server(c, server).vm_state == "stopped"  # type: ignore[union-attr]
    assert (done.vm_state, done.task_state) == ("stopped", None)
    with db.begin() as c, pytest.raises(Conflict):  # the table allows it, the owner moved
        repo.apply(c, srv_states.MACHINE, done, "start", expect={"locked": True})


def joined_reads_of_the_volume_side(db: Database) -> None:
    """An attachment with its volume, a volume with its export's initiators:
    one statement each, the same records as two reads would give."""
    repo = VolumeRepository(db)
    vid = _volume(db)
    with db.begin() as c:
        assert repo.volume_and_initiators(c, vid) == (VOLUMES.get(c, vid), frozenset())
        assert repo.volume_and_initiators(c, "no-such") is None
        for n, status in enumerate(["attached", "reserved", "detached"]):
            ATTACHMENTS.insert(c, {"id": f"{vid[:30]}-a{n}", "volume_id": vid,
                                   "initiator": f"iqn.2026-01.x:{n}", "attach_status": status,
                                   "deleted": status == "detached"})
        att = ATTACHMENTS.get(c, f"{vid[:30]}-a0")
        assert repo.attachment_and_volume(c, f"{vid[:30]}-a0") == (att, VOLUMES.get(c, vid))
        assert repo.attachment_and_volume(c, "no-such") is None
        _vol, initiators = repo.volume_and_initiators(c, vid)  # type: ignore[misc]
        assert initiators == {"iqn.2026-01.x:0", "iqn.2026-01.x:1"}


def after_commit_runs_only_once_committed(db: Database) -> None:
    seen: list[str] = []
    with db.begin() as c:
        c.after_commit(lambda: seen.append("a"))
        assert seen == []
    with pytest.raises(RuntimeError), db.begin() as c:
        c.after_commit(lambda: seen.append("b"))
        raise RuntimeError("rolled back")
    assert seen == ["a"]


CASES = [gateway_insert_applies_defaults_and_returns_the_row, values_round_trip,
         fixed_states_and_rowcount, takes_part_in_the_transaction, many_rows,
         operations_record_their_steps, prepared_and_sqlalchemy_share_one_transaction,
         a_refused_statement_rolls_back_and_returns_the_connection,
         a_server_holds_a_device_name_and_a_volume_once,
         concurrent_claims_of_one_device_one_wins, apply_is_one_conditional_update,
         joined_reads_of_the_volume_side, after_commit_runs_only_once_committed]
