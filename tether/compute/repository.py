"""The compute side's one way to its database: servers, block device
mappings (BDMs) and operations (instance actions with their step events).

Named queries return frozen records (``tether.db.records``); writes are named
too.  Every state change goes through :meth:`ComputeRepository.apply` (the
transition table, the conditional UPDATE, the notification sent once the
transaction commits).  The statements on an attach's or a detach's path are
prepared (``tether.db.prepared``); the rare ones go through SQLAlchemy.

Reservations are the database's: a live BDM keeps its device name and volume
in ``live_device`` / ``live_volume`` under unique indexes, so two requests
can never both hold ``/dev/sdb`` of one server, or one volume twice on one
server, whatever the interleaving.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import bindparam, delete, func, select

from tether.context import RequestContext
from tether.db import models
from tether.db import transitions as db_transitions
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import (
    ACTIONS,
    BDMS,
    EVENTS,
    INSTANCES,
    ActionRecord,
    BdmRecord,
    Duplicate,
    EventRecord,
    Gateway,
    InstanceRecord,
    by,
    grouped,
)
from tether.states import operation as op_states
from tether.states import server as srv_states
from tether.states.machine import StateMachine, Value

R = TypeVar("R")
# (context, event type, payload, is_error): see tether.notifications
Notify = Callable[[RequestContext, str, dict[str, Any], bool], None]


@dataclass(frozen=True)
class Notice:
    """A notification to send once the transaction that caused it commits."""

    ctx: RequestContext
    event_type: str
    payload: dict[str, Any]
    error: bool = False


class DeviceTaken(Exception):
    """Another live mapping of the server holds the device name or the volume."""


_I, _B, _A, _E = INSTANCES.columns, BDMS.columns, ACTIONS.columns, EVENTS.columns
_GATEWAYS: dict[str, Gateway[Any]] = {srv_states.MACHINE.resource: INSTANCES,
                                      op_states.MACHINE.resource: ACTIONS}

_SERVER_BDMS = Prepared(by(BDMS, _B["instance_uuid"] == bindparam("server_id"),
                           _B["deleted"].is_(False), order=[_B["id"]]))
_SERVER_VOLUME_BDM = Prepared(by(BDMS, _B["instance_uuid"] == bindparam("server_id"),
                                 _B["live_volume"] == bindparam("volume_id")))
_BDM_BY_UUID = Prepared(by(BDMS, _B["uuid"] == bindparam("uuid")))
_VOLUME_BDMS = by(BDMS, _B["instance_uuid"].in_(bindparam("server_ids", expanding=True)),
                  _B["deleted"].is_(False), _B["volume_id"].is_not(None), order=[_B["id"]])
# another server on this host still maps the volume (multiattach)
_OTHER_USERS_ON_HOST = Prepared(select(_B["id"]).join(
    INSTANCES.table, _I["uuid"] == _B["instance_uuid"]).where(
    _B["volume_id"] == bindparam("volume_id"), _B["deleted"].is_(False),
    _B["id"] != bindparam("bdm_id"), _I["host"] == bindparam("host")).limit(1))
_HOST_VOLUME_BDMS = by(BDMS, _I["host"] == bindparam("host"), _I["deleted"].is_(False),
                       _B["deleted"].is_(False), _B["volume_id"].is_not(None),
                       order=[_B["id"]]).join(INSTANCES.table,
                                              _I["uuid"] == _B["instance_uuid"])
_NEW_EVENT = Prepared(EVENTS.table.insert().values(
    {c: bindparam(f"p_{c}") for c in ("action_id", "event", "start_time", "finish_time",
                                     "host", "result", "details")}).returning(_E["id"]))
_END_EVENT = Prepared(EVENTS.table.update().where(_E["id"] == bindparam("p_id")).values(
    {c: bindparam(f"p_{c}") for c in ("finish_time", "result", "traceback", "details")}))
_ACTION = Prepared(by(ACTIONS, _A["id"] == bindparam("id")))
# an operation with its server, in one statement (both records' columns in order)
_ACTION_AND_SERVER = Prepared(select(
    *[c.label(f"a_{k}") for k, c in _A.items()],
    *[c.label(f"i_{k}") for k, c in _I.items()]).join_from(
    ACTIONS.table, INSTANCES.table, _I["uuid"] == _A["instance_uuid"]).where(
    _A["id"] == bindparam("id")))
_UNFINISHED = by(ACTIONS, _A["finish_time"].is_(None), order=[_A["id"]])


def _p(values: Mapping[str, Any]) -> dict[str, Any]:
    return {f"p_{k}": v for k, v in values.items()}


class ComputeRepository:
    def __init__(self, db: Database, notify: Notify | None = None) -> None:
        self.db = db
        self.notify = notify

    def begin(self) -> AbstractContextManager[Tx]:
        return self.db.begin()

    # -- state changes -------------------------------------------------------

    def apply(self, c: Tx, machine: StateMachine, record: R, event: str, *,
              to: Mapping[str, Value] | None = None, values: Mapping[str, Any] | None = None,
              expect: Mapping[str, Any] | None = None, notice: Notice | None = None) -> R:
        """The one way a server or an operation changes state (see
        :func:`tether.db.transitions.apply`); ``notice`` is sent once ``c``
        commits."""
        new: R = db_transitions.apply(c, machine, _GATEWAYS[machine.resource], record, event,
                                      to=to, values=values, expect=expect)
        self._notify_after(c, notice)
        return new

    def apply_to(self, c: Tx, machine: StateMachine, key: Any, event: str, *,
                 values: Mapping[str, Any] | None = None,
                 expect: Mapping[str, Any] | None = None, notice: Notice | None = None
                 ) -> None:
        """:meth:`apply` to a row not read first (``transitions.apply_to``)."""
        db_transitions.apply_to(c, machine, _GATEWAYS[machine.resource], key, event,
                                values=values, expect=expect)
        self._notify_after(c, notice)

    def _notify_after(self, c: Tx, notice: Notice | None) -> None:
        if notice is not None and self.notify is not None:
            notify = self.notify
            c.after_commit(lambda: notify(notice.ctx, notice.event_type, notice.payload,
                                          notice.error))

    # -- servers -------------------------------------------------------------

    @staticmethod
    def server(c: Tx, server_id: str) -> InstanceRecord | None:
        return INSTANCES.get(c, server_id)

    @staticmethod
    def servers(c: Tx, project_id: str | None) -> list[InstanceRecord]:
        """Live servers, newest first; of one project, or all (None)."""
        q = by(INSTANCES, _I["deleted"].is_(False), order=[_I["created_at"].desc()])
        if project_id is not None:
            q = q.where(_I["project_id"] == project_id)
        return INSTANCES.all(c, q)

    @staticmethod
    def servers_on_host(c: Tx, host: str) -> list[InstanceRecord]:
        return INSTANCES.all(c, by(INSTANCES, _I["deleted"].is_(False), _I["host"] == host,
                                   order=[_I["created_at"]]))

    @staticmethod
    def live_server_ids(c: Tx, server_ids: Iterable[str]) -> set[str]:
        ids = list(server_ids)
        if not ids:
            return set()
        return set(c.execute(select(_I["uuid"]).where(
            _I["uuid"].in_(ids), _I["deleted"].is_(False))).scalars())

    @staticmethod
    def server_counts(c: Tx) -> dict[str, int]:
        """Live servers per host (the scheduler's measure)."""
        rows = c.execute(select(_I["host"], func.count()).where(
            _I["deleted"].is_(False)).group_by(_I["host"])).all()
        return {host: n for host, n in rows if host is not None}

    @staticmethod
    def usage(c: Tx, project_id: str) -> dict[str, int]:
        """What a project's live servers count against its quotas (a server
        being deleted counts until it is gone, as in Nova)."""
        count, cores, ram = c.execute(select(
            func.count(), func.coalesce(func.sum(_I["vcpus"]), 0),
            func.coalesce(func.sum(_I["memory_mb"]), 0)).where(
            _I["project_id"] == project_id, _I["deleted"].is_(False))).one()
        return {"instances": int(count), "cores": int(cores), "ram": int(ram)}

    @staticmethod
    def new_server(c: Tx, values: Mapping[str, Any]) -> InstanceRecord:
        return INSTANCES.insert(c, {**values, "vm_state": srv_states.BUILDING,
                                    "task_state": srv_states.SPAWNING,
                                    "created_at": models.utcnow(), "deleted": False})

    @staticmethod
    def set_server(c: Tx, server: InstanceRecord, values: Mapping[str, Any]) -> None:
        """Columns that are not state: lock, power state."""
        INSTANCES.update(c, server.uuid, values)

    @staticmethod
    def drop_server(c: Tx, server_id: str) -> None:
        """A server whose creation was refused (nobody ever saw it)."""
        c.execute(delete(INSTANCES.table).where(_I["uuid"] == server_id))

    # -- block device mappings -------------------------------------------------

    @staticmethod
    def live_bdms(c: Tx, server_id: str) -> list[BdmRecord]:
        """The server's live mappings (its root volume included), oldest first."""
        return BDMS.all(c, _SERVER_BDMS, {"server_id": server_id})

    @staticmethod
    def live_bdm(c: Tx, server_id: str, volume_id: str) -> BdmRecord | None:
        return BDMS.first(c, _SERVER_VOLUME_BDM, {"server_id": server_id,
                                                  "volume_id": volume_id})

    @staticmethod
    def bdm(c: Tx, bdm_uuid: str) -> BdmRecord | None:
        """A mapping by uuid, deleted or not."""
        return BDMS.first(c, _BDM_BY_UUID, {"uuid": bdm_uuid})

    @staticmethod
    def volume_bdms(c: Tx, server_ids: list[str]) -> dict[str, list[BdmRecord]]:
        """Each server's live volume mappings."""
        if not server_ids:
            return {}
        rows = BDMS.all(c, _VOLUME_BDMS, {"server_ids": server_ids})
        return grouped(server_ids, rows, lambda b: b.instance_uuid)

    @staticmethod
    def host_volume_bdms(c: Tx, host: str) -> list[BdmRecord]:
        """Live volume mappings of the live servers of ``host``."""
        return BDMS.all(c, _HOST_VOLUME_BDMS, {"host": host})

    @staticmethod
    def other_users_on_host(c: Tx, bdm: BdmRecord, host: str) -> bool:
        """Whether another live mapping on ``host`` uses ``bdm``'s volume (one
        being attached included: its connection may be made any moment)."""
        return _OTHER_USERS_ON_HOST.first(c, {"volume_id": bdm.volume_id, "bdm_id": bdm.id,
                                              "host": host}) is not None

    @staticmethod
    def claim_bdm(c: Tx, values: Mapping[str, Any]) -> BdmRecord:
        """A new live mapping; :class:`DeviceTaken` when the server already
        holds its device name or its volume (the transaction is then
        unusable: let it roll back)."""
        try:
            return BDMS.insert(c, {**values, "live_device": values.get("device_name"),
                                   "live_volume": values.get("volume_id"),
                                   "created_at": models.utcnow(), "deleted": False})
        except Duplicate as exc:
            raise DeviceTaken(str(exc)) from exc

    @staticmethod
    def set_bdm(c: Tx, bdm: BdmRecord, values: Mapping[str, Any]) -> BdmRecord:
        """Columns that are not the mapping's identity: attachment id,
        connection_info and connector, delete_on_termination."""
        BDMS.update(c, bdm.id, values)
        return dataclasses.replace(bdm, **values)

    @staticmethod
    def release_bdm(c: Tx, bdm: BdmRecord) -> None:
        """Soft-delete: the row stays (history), its device and volume are free."""
        BDMS.update(c, bdm.id, {"deleted": True, "deleted_at": models.utcnow(),
                                "live_device": None, "live_volume": None})

    @staticmethod
    def drop_bdm(c: Tx, bdm_id: int) -> None:
        """A mapping whose request was refused (nobody ever saw it)."""
        c.execute(delete(BDMS.table).where(BDMS.pk == bdm_id))

    # -- operations ------------------------------------------------------------

    @staticmethod
    def new_action(c: Tx, values: Mapping[str, Any]) -> ActionRecord:
        return ACTIONS.insert(c, values)

    @staticmethod
    def action(c: Tx, action_id: int) -> ActionRecord | None:
        return ACTIONS.first(c, _ACTION, {"id": action_id})

    @staticmethod
    def action_and_server(c: Tx, action_id: int
                          ) -> tuple[ActionRecord, InstanceRecord] | None:
        """An operation and its server (one statement: every claim asks)."""
        row = _ACTION_AND_SERVER.first(c, {"id": action_id})
        if row is None:
            return None
        n = len(_A)
        return ActionRecord(*row[:n]), InstanceRecord(*row[n:])

    @staticmethod
    def actions(c: Tx, server_id: str) -> list[ActionRecord]:
        return ACTIONS.all(c, by(ACTIONS, _A["instance_uuid"] == server_id,
                                 order=[_A["start_time"].desc(), _A["id"].desc()]))

    @staticmethod
    def action_by_request(c: Tx, server_id: str, request_id: str) -> ActionRecord | None:
        return ACTIONS.first(c, by(ACTIONS, _A["instance_uuid"] == server_id,
                                   _A["request_id"] == request_id, order=[_A["id"].desc()]))

    @staticmethod
    def events(c: Tx, action_id: int) -> list[EventRecord]:
        return EVENTS.all(c, by(EVENTS, _E["action_id"] == action_id, order=[_E["id"]]))

    @staticmethod
    def unfinished(c: Tx, *, host: str | None = None, hostless: bool = False,
                   statuses: Iterable[str] = op_states.UNFINISHED,
                   started_before: dt.datetime | None = None) -> list[ActionRecord]:
        """Unfinished operations, oldest first: on the servers of ``host``, on
        servers without one (``hostless``), or all."""
        q = _UNFINISHED.where(_A["status"].in_(list(statuses)))
        if host is not None or hostless:
            q = q.join(INSTANCES.table, _I["uuid"] == _A["instance_uuid"]).where(
                _I["host"].is_(None) if hostless else _I["host"] == host)
        if started_before is not None:
            q = q.where(_A["start_time"] < started_before)
        return ACTIONS.all(c, q)

    @staticmethod
    def drop_action(c: Tx, action_id: int) -> None:
        """An operation whose request was refused, with its events."""
        c.execute(delete(EVENTS.table).where(_E["action_id"] == action_id))
        c.execute(delete(ACTIONS.table).where(ACTIONS.pk == action_id))

    @staticmethod
    def new_event(c: Tx, values: Mapping[str, Any]) -> int:
        row = _NEW_EVENT.first(c, _p(values))
        assert row is not None
        return int(row[0])

    @staticmethod
    def end_events(c: Tx, ends: list[dict[str, Any]]) -> None:
        """Finish events: each ``{id, finish_time, result, traceback, details}``."""
        if len(ends) == 1:
            _END_EVENT.run(c, _p(ends[0]))
        elif ends:
            _END_EVENT.run_many(c, [_p(e) for e in ends])

