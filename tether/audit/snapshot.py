"""What the database and this host hold, read once per audit.

Read order: the unfinished operations, then the host (libvirt, tgtd, the
host's sessions), then the rest of the database with the unfinished
operations again.  Whatever an operation touches is "busy" if it was
unfinished at either read, so an attach or a detach that starts or ends
while the host is read is never mistaken for drift.  Only reads: the audit
holds no lock and registers nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tether.compute.repository import ComputeRepository
from tether.connectors.base import HostSession, VolumeConnector
from tether.db import services
from tether.db.api import Database
from tether.db.records import (
    ActionRecord,
    AttachmentRecord,
    BdmRecord,
    InstanceRecord,
    VolumeRecord,
)
from tether.states import volume as vol_states
from tether.virt.driver import AttachedDisk, InstanceNotFound, PowerState, VirtDriver
from tether.volume.repository import VolumeRepository
from tether.volume.targets.base import ExportState, TargetDriver


@dataclass(frozen=True)
class Scope:
    """Where this audit runs: the compute host and the storage backend named
    by the configuration, and which of them are really here (a service of
    that kind ever ran, or the database gives it servers or volumes)."""

    host: str  # compute host: [DEFAULT] host
    backend: str  # volume host: <host>@<backend_name>
    timeout: dt.timedelta  # [compute] operation_timeout
    down_after: float  # [compute] service_down_time
    compute: bool = False
    volume: bool = False


@dataclass(frozen=True)
class Guest:
    """One Tether domain as libvirt has it."""

    uuid: str
    power: PowerState
    persistent: frozenset[str]  # volume ids of its ua-<volume> disks
    live: frozenset[str]  # the same in the running guest (none when shut off)


@dataclass(frozen=True)
class HostState:
    """What libvirt, tgtd and the host initiator hold; None: not looked at."""

    guests: dict[str, Guest] | None = None
    secrets: frozenset[str] | None = None  # volumes with a CHAP secret in libvirt
    exports: dict[str, ExportState] | None = None
    accounts: frozenset[str] | None = None  # tgtd's CHAP accounts
    host_sessions: frozenset[HostSession] | None = None
    initiator: str | None = None  # this host's initiator name
    connector_type: str | None = None


@dataclass(frozen=True)
class DbState:
    now: dt.datetime
    operations: list[ActionRecord]  # unfinished, as read last
    busy_operations: list[ActionRecord]  # unfinished at either read
    servers: dict[str, InstanceRecord]  # live, every host
    bdms: dict[str, list[BdmRecord]]  # live volume mappings of each live server
    volumes: dict[str, VolumeRecord]  # live, every backend
    attachments: dict[str, list[AttachmentRecord]]  # live, by volume
    initiators: dict[str, frozenset[str]]  # the ACL of each volume of this backend
    # deleted ones too, for the ids the host or an attachment names
    known_servers: dict[str, InstanceRecord]
    known_volumes: dict[str, VolumeRecord]
    owners: services.Owners  # the service incarnations alive now

    def servers_on(self, host: str) -> list[InstanceRecord]:
        return [s for s in self.servers.values() if s.host == host]

    def connected_on(self, host: str) -> dict[str, list[BdmRecord]]:
        """Volume id -> the live mappings on ``host`` whose connection was made."""
        out: dict[str, list[BdmRecord]] = {}
        for server in self.servers_on(host):
            for bdm in self.bdms.get(server.uuid, []):
                if bdm.volume_id is not None and bdm.connection_info:
                    out.setdefault(bdm.volume_id, []).append(bdm)
        return out


@dataclass(frozen=True)
class Busy:
    """What unfinished operations (and young creating/deleting volumes) work
    on: the checks leave it alone."""

    servers: frozenset[str]
    volumes: frozenset[str]

    def any(self, server: str | None = None, volume: str | None = None) -> bool:
        return (server is not None and server in self.servers) or (
            volume is not None and volume in self.volumes)


def _age(now: dt.datetime, then: dt.datetime | None) -> dt.timedelta:
    return now - then if then is not None else dt.timedelta(0)


def busy(db: DbState, scope: Scope) -> Busy:
    servers = {op.instance_uuid for op in db.busy_operations}
    volumes = {op.resource_id for op in db.busy_operations if op.resource_id}
    for server in servers:
        volumes.update(b.volume_id for b in db.bdms.get(server, []) if b.volume_id)
    volumes.update(v.id for v in db.volumes.values()
                   if v.status in (vol_states.CREATING, vol_states.DELETING)
                   and _age(db.now, v.updated_at or v.created_at) <= scope.timeout)
    return Busy(frozenset(servers), frozenset(volumes))


class Reader:
    """Reads a :class:`DbState` and a :class:`HostState`."""

    def __init__(self, db: Database, scope: Scope, virt: VirtDriver | None,
                 target: TargetDriver | None, connector: VolumeConnector | None,
                 now: Callable[[], dt.datetime]) -> None:
        self.db = db
        self.compute = ComputeRepository(db)
        self.volume = VolumeRepository(db)
        self.scope = scope
        self.virt = virt
        self.target = target
        self.connector = connector
        self.now = now

    def read(self) -> tuple[DbState, HostState]:
        with self.compute.begin() as c:
            before = self.compute.unfinished(c)
        host = self.read_host()
        return self.read_db(before, host), host

    # -- the host ------------------------------------------------------------------

    def read_host(self) -> HostState:
        guests = secrets = exports = accounts = sessions = initiator = kind = None
        if self.scope.compute and self.virt is not None and self.connector is not None:
            guests = self._guests(self.virt)
            secrets = frozenset(self.virt.chap_secrets())
            sessions = self.connector.host_sessions()
            initiator = self.connector.properties().initiator
            kind = self.connector.connector_type
        if self.scope.volume and self.target is not None:
            exports = self.target.exports()
            accounts = self.target.accounts()
        return HostState(guests, secrets, exports, accounts, sessions, initiator, kind)

    @staticmethod
    def _guests(virt: VirtDriver) -> dict[str, Guest]:
        guests = {}
        for server in virt.list_servers():
            try:
                power = virt.power_state(server)
                persistent = _volumes(virt.list_disks(server, live=False))
                live = _volumes(virt.list_disks(server, live=True)) if power.is_live \
                    else frozenset()
            except InstanceNotFound:
                continue  # undefined while we looked
            guests[server] = Guest(server, power, persistent, live)
        return guests

    # -- the database --------------------------------------------------------------

    def read_db(self, before: list[ActionRecord], host: HostState) -> DbState:
        now = self.now()
        with self.compute.begin() as c:
            operations = self.compute.unfinished(c)
            servers = {s.uuid: s for s in self.compute.servers(c, None)}
            bdms = self.compute.volume_bdms(c, list(servers))
        with self.volume.begin() as c:
            volumes = {v.id: v for v in self.volume.volumes(c, None, {})}
            attachments = self.volume.live_attachments_of(c, list(volumes))
            initiators = {v.id: self.volume.initiators(c, v.id) for v in volumes.values()
                          if v.host == self.scope.backend}
            wanted_volumes = set(host.secrets or ()) | set(host.exports or ())
            known_volumes = dict(volumes)
            for vid in wanted_volumes - set(volumes):
                vol = self.volume.volume(c, vid)
                if vol is not None:
                    known_volumes[vid] = vol
        wanted_servers = set(host.guests or ()) | {
            a.instance_uuid for atts in attachments.values() for a in atts if a.instance_uuid}
        known_servers = dict(servers)
        with self.compute.begin() as c:
            for sid in wanted_servers - set(servers):
                inst = self.compute.server(c, sid)
                if inst is not None:
                    known_servers[sid] = inst
        by_id = {op.id: op for op in before}
        by_id.update({op.id: op for op in operations})
        return DbState(now, operations, list(by_id.values()), servers, bdms, volumes,
                       attachments, initiators, known_servers, known_volumes,
                       services.owners(self.db, self.scope.down_after))


def _volumes(disks: list[AttachedDisk]) -> frozenset[str]:
    """The volumes of a guest's ``ua-<volume id>`` disks (not ``ua-root``, an
    image's root disk)."""
    return frozenset(d.volume_id for d in disks if d.volume_id and _is_uuid(d.volume_id))


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False
