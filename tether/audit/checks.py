"""The checks that need only the database, over every host: operations,
server tasks, volume statuses, mappings against storage's attachments.

Each check yields findings; what unfinished operations touch (:class:`Busy`)
is left alone, since it may disagree for a moment.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator

from tether.audit.findings import Finding, drift, in_progress
from tether.audit.snapshot import Busy, DbState, Scope
from tether.db.records import ActionRecord, VolumeRecord
from tether.states import operation as op_states
from tether.states import volume as vol_states

_SETTLE_FROM = vol_states.MACHINE.sources("settle")["status"]


def ago(delta: dt.timedelta) -> str:
    s = max(0, int(delta.total_seconds()))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


def names(items: Iterable[str | None]) -> str:
    return ", ".join(sorted(str(i) for i in items)) or "none"


# -- 1. operations -----------------------------------------------------------------

def _what(op: ActionRecord) -> str:
    if op.resource_id:
        return f"{op.action} of volume {op.resource_id} on server {op.instance_uuid}"
    return f"{op.action} of server {op.instance_uuid}"


def _stale(op: ActionRecord, db: DbState, scope: Scope) -> str | None:
    """Why nobody will finish ``op`` unless its recovery runs, or None."""
    age = db.now - (op.updated_at or op.start_time)
    if op.status == op_states.QUEUED:
        return f"queued {ago(age)} ago and never taken" if age > scope.timeout else None
    if not db.owners.alive(op.owner):
        return f"{op.status} under owner {op.owner}, which is no longer alive"
    return None


def _who_recovers(op: ActionRecord, db: DbState) -> str:
    if op.status == op_states.API:
        return ("an API process takes it over when it starts or at its next sweep: "
                "run `tether serve` or `tether service api`")
    server = db.servers.get(op.instance_uuid)
    host = server.host if server is not None else None
    if host is None:
        return "no compute service will take it: its server has no host any more"
    return (f"the compute service of host {host} recovers it when it starts or at its next "
            f"sweep: run `tether serve` or `tether service compute` there")


def operations(db: DbState, scope: Scope) -> Iterator[Finding]:
    for op in db.operations:
        resource = f"operation {op.id}"
        why = _stale(op, db, scope)
        if why is None:
            age = ago(db.now - op.start_time)
            yield in_progress("operation", resource, f"{_what(op)}: {op.status}, for {age}")
        else:
            yield drift("stale-operation", resource, f"{_what(op)}: {why}",
                        advice=_who_recovers(op, db))


# -- 2. server tasks ---------------------------------------------------------------

def tasks(db: DbState, busy: Busy) -> Iterator[Finding]:
    for server in db.servers.values():
        if server.task_state is None or server.uuid in busy.servers:
            continue
        yield drift("task-without-operation", f"server {server.uuid}",
                    f"task_state {server.task_state} but no operation is working on it "
                    "(every request on the server is refused meanwhile)",
                    advice="nothing will clear it: an administrator sets the server's "
                           "task_state to NULL (and vm_state to what its guest is) in the "
                           "database")


# -- 3. volume statuses ------------------------------------------------------------

def _stuck_advice(vol: VolumeRecord, attached: bool) -> str:
    if vol.status in (vol_states.CREATING, vol_states.DELETING):
        return (f"the volume service of {vol.host} finishes it when it starts or at its next "
                "reconcile: run `tether serve` or `tether service volume` there")
    if vol.status == vol_states.DETACHING and attached:
        return ("the detach that began is gone: detach the volume again through the Compute "
                "API, or os-roll_detaching it back to in-use")
    return ("an attach nobody finishes: attach again through the Compute API, or delete its "
            "attachment through the Block Storage API")


def _held(vol: VolumeRecord, remaining: list[str]) -> bool:
    """A volume reserved by attachments without a connector is a stable state,
    not a stuck one: a shelved-offloaded server keeps its volumes so, and a
    Block Storage client may reserve one for as long as it likes."""
    return (vol.status == vol_states.RESERVED and bool(remaining)
            and all(s == "reserved" for s in remaining))


def volumes(db: DbState, scope: Scope, busy: Busy) -> Iterator[Finding]:
    for vol in db.volumes.values():
        age = db.now - (vol.updated_at or vol.created_at)
        if vol.status in (vol_states.CREATING, vol_states.DELETING) and age <= scope.timeout:
            yield in_progress("volume", f"volume {vol.id}", f"{vol.status} for {ago(age)} "
                              f"on {vol.host}")
            continue
        if vol.id in busy.volumes:
            continue
        remaining = [a.attach_status for a in db.attachments.get(vol.id, [])]
        settled = vol_states.settled_status(remaining)
        resource = f"volume {vol.id}"
        says = f"its live attachments ({names(remaining)}) make it {settled}"
        if (vol.status in _SETTLE_FROM and settled != vol.status
                and not (vol.status == vol_states.DETACHING and remaining)):
            detail = f"status {vol.status}, but {says}"
            if scope.volume and vol.host == scope.backend:
                yield drift("volume-status", resource, detail, fix=f"settle it to {settled}",
                            target=(vol.id,))
            else:
                yield drift("volume-status", resource, detail, advice=_elsewhere(vol))
        elif vol.status == vol_states.AVAILABLE and remaining:
            yield drift("volume-status", resource, f"status available, but {says}",
                        advice="remove the attachments no server uses (orphan-attachment), "
                               f"or os-reset_status the volume to {settled}")
        elif (vol.status in vol_states.TRANSITIONAL and age > scope.timeout
              and not _held(vol, remaining)):
            yield drift("stuck-volume", resource,
                        f"{vol.status} for {ago(age)} and nothing is working on it",
                        advice=_stuck_advice(vol, bool(remaining)))


# -- 4. mappings and attachments ---------------------------------------------------

def mappings(db: DbState, scope: Scope, busy: Busy) -> Iterator[Finding]:
    live = {a.id for atts in db.attachments.values() for a in atts}
    for server_id, bdms in db.bdms.items():
        for bdm in bdms:
            if (bdm.attachment_id is None or bdm.attachment_id in live
                    or busy.any(server_id, bdm.volume_id)):
                continue
            yield drift("bdm-attachment-missing", f"server {server_id} volume {bdm.volume_id}",
                        f"its mapping records attachment {bdm.attachment_id}, which storage "
                        "no longer has (deleted or missing)",
                        advice="detach the volume through the Compute API (its storage step "
                               "finds nothing left to delete)")
    yield from _orphans(db, scope, busy)


def _orphans(db: DbState, scope: Scope, busy: Busy) -> Iterator[Finding]:
    for vid, atts in db.attachments.items():
        vol = db.volumes[vid]
        for att in atts:
            sid = att.instance_uuid
            server = db.known_servers.get(sid) if sid is not None else None
            if sid is None or server is None or busy.any(sid, vid):
                continue  # not a Tether server's (legacy, another Nova), or in progress
            bdm = next((b for b in db.bdms.get(sid, []) if b.volume_id == vid), None)
            if server.deleted:
                why = f"its server {sid} is deleted"
            elif bdm is None:
                why = f"server {sid} has no mapping of the volume"
            elif bdm.attachment_id is not None and bdm.attachment_id != att.id:
                why = f"server {sid} maps the volume with attachment {bdm.attachment_id}"
            else:
                continue
            detail = f"attachment {att.id} ({att.attach_status}) of volume {vid}: {why}"
            resource = f"attachment {att.id}"
            if scope.volume and vol.host == scope.backend:
                yield drift("orphan-attachment", resource, detail,
                            fix="delete it and make the export match (sync_export)",
                            target=(att.id, vid))
            else:
                yield drift("orphan-attachment", resource, detail, advice=_elsewhere(vol))


def _elsewhere(vol: VolumeRecord) -> str:
    return f"run `tether audit --repair` on the volume's host ({vol.host})"
