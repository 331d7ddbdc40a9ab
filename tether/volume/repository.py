"""The block-storage side's one way to its database: volumes and their
attachments.

Named queries return frozen records; every status change goes through
:meth:`VolumeRepository.apply` (the transition table and one conditional
UPDATE, see :func:`tether.db.transitions.apply`).  The statements of an
attach's or a detach's path are prepared (``tether.db.prepared``).  This side
never reads the compute side's tables: what it must know of servers it asks
the Compute API.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, bindparam, func, select, update

from tether.db import models
from tether.db import transitions as db_transitions
from tether.db.api import Database, Tx
from tether.db.prepared import Prepared
from tether.db.records import (
    ATTACHMENTS,
    VOLUMES,
    AttachmentRecord,
    Gateway,
    VolumeRecord,
    by,
    grouped,
    one_of,
)
from tether.states import attachment as att_states
from tether.states import volume as vol_states
from tether.states.machine import StateMachine, Value

R = TypeVar("R")
DEFAULT_TYPE = "__DEFAULT__"  # the one volume type (tether.api.volume_types)
_V, _A = VOLUMES.columns, ATTACHMENTS.columns
_GATEWAYS: dict[str, Gateway[Any]] = {vol_states.MACHINE.resource: VOLUMES,
                                      att_states.MACHINE.resource: ATTACHMENTS}

_LIVE_OF_VOLUME = Prepared(by(ATTACHMENTS, _A["volume_id"] == bindparam("volume_id"),
                              _A["deleted"].is_(False), order=[_A["created_at"], _A["id"]]))
_LIVE_OF_VOLUMES = by(ATTACHMENTS, _A["volume_id"].in_(bindparam("volume_ids", expanding=True)),
                      _A["deleted"].is_(False), order=[_A["created_at"], _A["id"]])
# the ACL of an export: initiators of the volume's live, connected attachments
_INITIATORS = Prepared(select(_A["initiator"]).where(
    _A["volume_id"] == bindparam("volume_id"), _A["deleted"].is_(False),
    _A["initiator"].is_not(None), one_of(_A["attach_status"], att_states.LIVE_STATES)))
# legacy connections not yet attached to an instance
_PENDING = by(ATTACHMENTS, _A["volume_id"] == bindparam("volume_id"), _A["deleted"].is_(False),
              _A["instance_uuid"].is_(None),
              _A["attach_status"].in_([att_states.ATTACHING, att_states.RESERVED]),
              order=[_A["created_at"]])


# an attachment with its volume, in one statement (both records' columns in order)
_ATTACHMENT_AND_VOLUME = Prepared(select(
    *[c.label(f"a_{k}") for k, c in _A.items()],
    *[c.label(f"v_{k}") for k, c in _V.items()]).join_from(
    ATTACHMENTS.table, VOLUMES.table, _V["id"] == _A["volume_id"]).where(
    _A["id"] == bindparam("id")))
# a volume with its export's initiators (NULL when it has none): one row per initiator
_VOLUME_AND_INITIATORS = Prepared(select(
    *[c.label(k) for k, c in _V.items()], _A["initiator"].label("initiator_")).outerjoin_from(
    VOLUMES.table, ATTACHMENTS.table,
    (_A["volume_id"] == _V["id"]) & _A["deleted"].is_(False) & _A["initiator"].is_not(None)
    & one_of(_A["attach_status"], att_states.LIVE_STATES)).where(_V["id"] == bindparam("id")))


# every live volume of one backend with the initiators its export must admit
_HOST_EXPORTS = select(_V["id"], _V["status"], _V["chap_username"], _A["initiator"]).outerjoin_from(
    VOLUMES.table, ATTACHMENTS.table,
    (_A["volume_id"] == _V["id"]) & _A["deleted"].is_(False) & _A["initiator"].is_not(None)
    & one_of(_A["attach_status"], att_states.LIVE_STATES)).where(
    _V["host"] == bindparam("host"), _V["deleted"].is_(False))


class VolumeRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def begin(self) -> AbstractContextManager[Tx]:
        return self.db.begin()

    @staticmethod
    def apply(c: Tx, machine: StateMachine, record: R, event: str, *,
              to: Mapping[str, Value] | None = None, values: Mapping[str, Any] | None = None,
              expect: Mapping[str, Any] | None = None) -> R:
        """The one way a volume or an attachment changes status."""
        new: R = db_transitions.apply(c, machine, _GATEWAYS[machine.resource], record, event,
                                      to=to, values=values, expect=expect)
        return new

    # -- volumes -------------------------------------------------------------

    @staticmethod
    def volume(c: Tx, volume_id: str) -> VolumeRecord | None:
        return VOLUMES.get(c, volume_id)

    @staticmethod
    def volumes(c: Tx, project_id: str | None, filters: Mapping[str, str]
                ) -> list[VolumeRecord]:
        """Live volumes, newest first: of one project or all (None); filters
        on ``name``, ``status``, ``project_id``."""
        conditions: list[ColumnElement[bool]] = [_V["deleted"].is_(False)]
        if project_id is not None:
            conditions.append(_V["project_id"] == project_id)
        for key in ("name", "status", "project_id"):
            if key in filters:
                conditions.append(_V[key] == filters[key])
        return VOLUMES.all(c, by(VOLUMES, *conditions, order=[_V["created_at"].desc(), _V["id"]]))

    @staticmethod
    def volumes_of_host(c: Tx, host: str, statuses: Iterable[str | None] | None = None
                        ) -> list[VolumeRecord]:
        """Live volumes of one backend, optionally only those in ``statuses``."""
        q = by(VOLUMES, _V["host"] == host, _V["deleted"].is_(False), order=[_V["created_at"]])
        if statuses is not None:
            q = q.where(_V["status"].in_(list(statuses)))
        return VOLUMES.all(c, q)

    @staticmethod
    def live_volume_ids(c: Tx, volume_ids: Iterable[str]) -> set[str]:
        ids = list(volume_ids)
        if not ids:
            return set()
        return set(c.execute(select(_V["id"]).where(
            _V["id"].in_(ids), _V["deleted"].is_(False))).scalars())

    @staticmethod
    def volume_counts(c: Tx) -> dict[str, int]:
        """Live volumes per backend host (the scheduler's measure)."""
        rows = c.execute(select(_V["host"], func.count()).where(
            _V["deleted"].is_(False)).group_by(_V["host"])).all()
        return {host: n for host, n in rows if host is not None}

    @staticmethod
    def usage(c: Tx, project_id: str) -> dict[str, int]:
        """What a project's live volumes count against its quotas (every
        volume is of the one type, so its per-type quotas count the same)."""
        count, size = c.execute(select(func.count(), func.coalesce(func.sum(_V["size"]), 0))
                                .where(_V["project_id"] == project_id,
                                       _V["deleted"].is_(False))).one()
        return {"volumes": int(count), "gigabytes": int(size),
                f"volumes_{DEFAULT_TYPE}": int(count), f"gigabytes_{DEFAULT_TYPE}": int(size)}

    @staticmethod
    def new_volume(c: Tx, values: Mapping[str, Any]) -> VolumeRecord:
        return VOLUMES.insert(c, {**values, "status": vol_states.CREATING,
                                  "created_at": models.utcnow(), "deleted": False})

    @staticmethod
    def set_volume(c: Tx, volume: VolumeRecord, values: Mapping[str, Any]) -> None:
        """Columns that are not the status: name, description, metadata, CHAP."""
        VOLUMES.update(c, volume.id, values)

    # -- CHAP secrets at rest (tether.volume.secret_box) --------------------

    @staticmethod
    def chap_passwords(c: Tx) -> dict[str, str]:
        """Every stored CHAP password (sealed, or clear from an older Tether) by volume."""
        rows = c.execute(select(_V["id"], _V["chap_password"]).where(
            _V["chap_password"].is_not(None)).order_by(_V["id"]))
        return {vid: stored for vid, stored in rows}

    @staticmethod
    def replace_chap_password(c: Tx, volume_id: str, old: str, new: str) -> bool:
        """Store ``new`` where the volume still holds ``old``; False when it no
        longer does (another process got there first).  ``updated_at`` is
        left alone: this is not a change the reconcile should see."""
        done = c.execute(update(VOLUMES.table).where(
            _V["id"] == volume_id, _V["chap_password"] == old).values(chap_password=new))
        return bool(getattr(done, "rowcount", 0) == 1)

    # -- attachments ---------------------------------------------------------

    @staticmethod
    def attachment(c: Tx, attachment_id: str) -> AttachmentRecord | None:
        return ATTACHMENTS.get(c, attachment_id)

    @staticmethod
    def attachment_and_volume(c: Tx, attachment_id: str
                              ) -> tuple[AttachmentRecord, VolumeRecord] | None:
        """An attachment and its volume (one statement: the hot paths ask often)."""
        row = _ATTACHMENT_AND_VOLUME.first(c, {"id": attachment_id})
        if row is None:
            return None
        n = len(_A)
        return AttachmentRecord(*row[:n]), VolumeRecord(*row[n:])

    @staticmethod
    def volume_and_initiators(c: Tx, volume_id: str
                              ) -> tuple[VolumeRecord, frozenset[str]] | None:
        """A volume and the ACL its export must have (one statement)."""
        rows = _VOLUME_AND_INITIATORS.rows(c, {"id": volume_id})
        if not rows:
            return None
        return VolumeRecord(*rows[0][:-1]), frozenset(r[-1] for r in rows if r[-1])

    @staticmethod
    def live_attachments(c: Tx, volume_id: str) -> list[AttachmentRecord]:
        return ATTACHMENTS.all(c, _LIVE_OF_VOLUME, {"volume_id": volume_id})

    @staticmethod
    def live_attachments_of(c: Tx, volume_ids: list[str]) -> dict[str, list[AttachmentRecord]]:
        if not volume_ids:
            return {}
        rows = ATTACHMENTS.all(c, _LIVE_OF_VOLUMES, {"volume_ids": volume_ids})
        return grouped(volume_ids, rows, lambda a: a.volume_id)

    @staticmethod
    def attachments(c: Tx, project_id: str | None, filters: Mapping[str, str]
                    ) -> list[AttachmentRecord]:
        """Live attachments (of one project's volumes, or all): filters on
        ``volume_id``, ``instance_id``, ``status``."""
        q = ATTACHMENTS.select.join(VOLUMES.table, _V["id"] == _A["volume_id"]).where(
            _A["deleted"].is_(False))
        if project_id is not None:
            q = q.where(_V["project_id"] == project_id)
        for key, column in (("volume_id", "volume_id"), ("instance_id", "instance_uuid"),
                            ("status", "attach_status")):
            if key in filters:
                q = q.where(_A[column] == filters[key])
        return ATTACHMENTS.all(c, q.order_by(_A["created_at"], _A["id"]))

    @staticmethod
    def pending_legacy(c: Tx, volume_id: str) -> list[AttachmentRecord]:
        """Legacy connections (os-initialize_connection) not yet attached."""
        return ATTACHMENTS.all(c, _PENDING, {"volume_id": volume_id})

    @staticmethod
    def initiators(c: Tx, volume_id: str) -> frozenset[str]:
        """The ACL the volume's export must have."""
        return frozenset(r[0] for r in _INITIATORS.rows(c, {"volume_id": volume_id}) if r[0])

    @staticmethod
    def host_exports(c: Tx, host: str) -> dict[str, tuple[str, str | None, frozenset[str]]]:
        """Every live volume of a backend: (status, CHAP user, the initiators its
        export must admit), in one statement (the reconcile's view)."""
        out: dict[str, tuple[str, str | None, set[str]]] = {}
        for vid, status, chap, initiator in c.execute(_HOST_EXPORTS, {"host": host}):
            entry = out.setdefault(vid, (status, chap, set()))
            if initiator:
                entry[2].add(initiator)
        return {vid: (status, chap, frozenset(inits)) for vid, (status, chap, inits)
                in out.items()}

    @staticmethod
    def new_attachment(c: Tx, values: Mapping[str, Any]) -> AttachmentRecord:
        return ATTACHMENTS.insert(c, {**values, "created_at": models.utcnow(),
                                      "deleted": False})

    @staticmethod
    def set_attachment(c: Tx, attachment: AttachmentRecord, values: Mapping[str, Any],
                       expect: Mapping[str, Any] | None = None) -> bool:
        """Columns that are not the status (connector, initiator, instance,
        mountpoint ...); False when ``expect`` no longer holds."""
        return ATTACHMENTS.update(c, attachment.id, values, expect)

    @staticmethod
    def deleted_values() -> dict[str, Any]:
        now: dt.datetime = models.utcnow()
        return {"deleted": True, "deleted_at": now, "detached_at": now}
