"""The checks of this host against the database: libvirt's domains, disks and
CHAP secrets (the servers of this compute host), tgtd's targets, accounts and
sessions (the volumes of this storage backend), and the host's own iSCSI
sessions.  What unfinished operations touch is left alone (:class:`Busy`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from tether.audit.checks import names
from tether.audit.findings import Finding, drift
from tether.audit.snapshot import Busy, DbState, Guest, HostState, Scope
from tether.db.records import InstanceRecord
from tether.states import server as srv_states
from tether.states import volume as vol_states
from tether.virt.driver import PowerState, disk_alias
from tether.volume.targets.base import ExportState, target_iqn

# what a volume's CHAP user name looks like (tether.volume.manager.new_chap)
TETHER_ACCOUNT = re.compile(r"tether[0-9a-f]+")
_POWER = {srv_states.ACTIVE: PowerState.RUNNING, srv_states.STOPPED: PowerState.SHUTOFF,
          srv_states.SHELVED: PowerState.SHUTOFF}
_HAS_GUEST = frozenset(_POWER)
_REDO = "detach the volume through the Compute API and attach it again"


# -- 5. libvirt: domains, disks, power ----------------------------------------------

def domains(db: DbState, host: HostState, scope: Scope, busy: Busy,
            prefix: str) -> Iterator[Finding]:
    guests = host.guests or {}
    mine = {s.uuid: s for s in db.servers_on(scope.host)}
    for server in mine.values():
        if server.uuid in busy.servers:
            continue
        guest = guests.get(server.uuid)
        if guest is not None:
            yield from _power(server, guest, prefix)
            yield from _disks(server, guest, db, busy, prefix)
        elif server.vm_state in _HAS_GUEST:
            yield drift("missing-domain", f"server {server.uuid}",
                        f"{server.vm_state} on this host, but libvirt has no domain "
                        f"{prefix}{server.uuid}",
                        advice="the guest is gone: delete the server through the Compute API "
                               "(its volumes are released) and create it again")
    for uuid, guest in guests.items():
        if uuid in mine or uuid in busy.servers:
            continue
        known = db.known_servers.get(uuid)
        if known is None:
            why = "unknown to the database"
        elif known.deleted:
            why = "deleted"
        elif known.host is None:
            why = "shelved-offloaded (it has no host)"
        else:
            why = f"on host {known.host}"
        yield drift("stray-domain", f"domain {prefix}{uuid}",
                    f"server {uuid} is {why}, but its domain is here ({guest.power.value})",
                    fix="destroy and undefine the domain", target=(uuid,))


def _power(server: InstanceRecord, guest: Guest, prefix: str) -> Iterator[Finding]:
    wanted = _POWER.get(server.vm_state)
    if wanted is None or guest.power == wanted:
        return
    name = f"{prefix}{server.uuid}"
    if wanted is PowerState.SHUTOFF:
        advice = f"power it off: `virsh destroy {name}` (as a stop does)"
    elif guest.power is PowerState.PAUSED:
        advice = f"resume it: `virsh resume {name}`"
    else:
        advice = f"start it: `virsh start {name}`, or stop and start the server"
    yield drift("power-state", f"server {server.uuid}",
                f"vm_state {server.vm_state}, but the guest is {guest.power.value}",
                advice=advice)


def _disks(server: InstanceRecord, guest: Guest, db: DbState, busy: Busy,
           prefix: str) -> Iterator[Finding]:
    connected = {b.volume_id for b in db.bdms.get(server.uuid, [])
                 if b.volume_id is not None and b.connection_info}
    for vid in sorted(connected - busy.volumes):
        missing = []
        if vid not in guest.persistent:
            missing.append("the persistent definition")
        if guest.power.is_live and vid not in guest.live:
            missing.append("the running guest")
        if missing:
            yield drift("missing-disk", f"server {server.uuid} volume {vid}",
                        f"connected, but disk {disk_alias(vid)} is missing from "
                        f"{' and '.join(missing)}", advice=_REDO)
    for vid in sorted((guest.persistent | guest.live) - connected - busy.volumes):
        where = " and ".join(w for w, has in (
            ("the persistent definition", vid in guest.persistent),
            ("the running guest", vid in guest.live)) if has)
        alias = disk_alias(vid)
        yield drift("stray-disk", f"server {server.uuid} volume {vid}",
                    f"disk {alias} is in {where}, but no mapping of the server connects the "
                    "volume",
                    advice="the guest may be using it, so it is left: check inside the guest, "
                           f"then `virsh detach-device-alias {prefix}{server.uuid} {alias} "
                           "--live --config`")


# -- 6. libvirt: CHAP secrets (iscsi-direct) --------------------------------------------

def secrets(db: DbState, host: HostState, scope: Scope, busy: Busy,
            prefix: str) -> Iterator[Finding]:
    if host.connector_type != "iscsi-direct" or host.secrets is None:
        return
    connected = db.connected_on(scope.host)
    for vid in sorted(host.secrets - set(connected) - busy.volumes):
        vol = db.known_volumes.get(vid)
        why = ("the volume is unknown to the database" if vol is None
               else "the volume is deleted" if vol.deleted
               else "no mapping on this host connects it")
        yield drift("stray-secret", f"secret {prefix}volume-{vid}",
                    f"libvirt holds the CHAP secret of volume {vid}, but {why}",
                    fix="undefine the secret", target=(vid,))
    for vid in sorted(set(connected) - host.secrets - busy.volumes):
        for bdm in connected[vid]:
            yield drift("missing-secret", f"server {bdm.instance_uuid} volume {vid}",
                        "connected, but libvirt has no CHAP secret for it: QEMU cannot log "
                        "in again (a restart of the guest fails)", advice=_REDO)


# -- 7. tgtd: targets, LUNs, ACLs, accounts, sessions ------------------------------

def exports(db: DbState, host: HostState, scope: Scope, busy: Busy,
            backing_path: Callable[[str], str]) -> Iterator[Finding]:
    if host.exports is None:
        return
    held_all = host.exports
    for vol in db.volumes.values():
        if (vol.host != scope.backend or vol.id in busy.volumes
                or vol.status in (vol_states.CREATING, vol_states.DELETING)):
            continue
        wanted = db.initiators.get(vol.id, frozenset())
        held = held_all.get(vol.id)
        if held is None:
            if wanted:
                yield _export_drift("missing-export", vol.id, f"attached to {names(wanted)}, "
                                    "but tgtd has no target for it")
            continue
        if held.initiators != wanted or not wanted:  # (none: no target at all)
            yield _export_drift("export-acl", vol.id, (
                f"its target admits {names(held.initiators)}, its attachments "
                f"{names(wanted)}") if wanted else "its target exists, but no attachment is "
                                                  "connected")
        path = backing_path(vol.id)
        if held.backing_path != path:
            yield _export_drift("export-lun", vol.id, f"LUN 1 is backed by "
                                f"{held.backing_path or 'nothing'}, not {path}")
        if held.chap_username != vol.chap_username:
            yield _export_drift("export-account", vol.id, f"the target's CHAP account is "
                                f"{held.chap_username or 'none'}, not the volume's "
                                f"{vol.chap_username or 'none'}")
        yield from _foreign_sessions(vol.id, held, host)
    for vid, held in sorted(held_all.items()):
        known = db.known_volumes.get(vid)
        if known is not None and not known.deleted:
            continue  # a live volume (of another backend: not ours to judge)
        yield drift("stray-export", f"target {held.target_iqn}",
                    f"volume {vid} is {'deleted' if known else 'unknown to the database'}, "
                    "but tgtd still exports it", fix="remove the target (unexport)",
                    target=(vid,))


def _export_drift(kind: str, vid: str, detail: str) -> Finding:
    return drift(kind, f"volume {vid}", detail,
                 fix="make the export what the database says (sync_export)", target=(vid,))


def _foreign_sessions(vid: str, held: ExportState, host: HostState) -> Iterator[Finding]:
    """Sessions of initiators the ACL does not admit (this host's own are
    :func:`sessions`' business)."""
    own = {host.initiator} if host.connector_type == "iscsi-direct" else set()
    for initiator in sorted(held.sessions - held.initiators - own):
        yield drift("foreign-session", f"volume {vid} session {initiator}",
                    f"{initiator} is logged in to the volume's target, which does not admit it",
                    advice="tgtd does not end a session when the ACL changes: log it out on "
                           "that initiator")


def accounts(db: DbState, host: HostState) -> Iterator[Finding]:
    if host.accounts is None or host.exports is None:
        return
    bound = {e.chap_username for e in host.exports.values()}
    owned = {v.chap_username for v in db.volumes.values()}
    for name in sorted(host.accounts - bound - owned):
        if TETHER_ACCOUNT.fullmatch(name):
            yield drift("stray-account", f"account {name}",
                        "tgtd holds a Tether CHAP account that no target uses and no live "
                        "volume owns", fix="delete the account", target=(name,))


# -- 8. this host's sessions --------------------------------------------------------

def sessions(db: DbState, host: HostState, scope: Scope, busy: Busy) -> Iterator[Finding]:
    connected = set(db.connected_on(scope.host))
    if host.connector_type == "iscsi-direct":
        # QEMU's sessions: only tgtd shows them, when it is this host's
        for vid, held in sorted((host.exports or {}).items()):
            if (host.initiator in held.sessions and vid not in connected
                    and vid not in busy.volumes):
                yield drift("stray-host-session", f"volume {vid} session {host.initiator}",
                            "tgtd shows a session from this host's initiator, but no mapping "
                            "on this host connects the volume",
                            advice="a QEMU here is still logged in (see stray-disk and "
                                   "stray-domain): the session ends with that disk or guest")
        return
    prefix = target_iqn("")
    for s in sorted(host.host_sessions or (), key=lambda s: (s.target_iqn, s.portal)):
        volume = s.target_iqn[len(prefix):] if s.target_iqn.startswith(prefix) else ""
        if not volume or volume in connected or volume in busy.volumes:
            continue
        yield drift("stray-host-session", f"session {s.target_iqn} at {s.portal}",
                    f"this host is logged in to the target of volume {volume}, but no mapping on "
                    "this host connects it",
                    advice=f"check that no device of it is in use, then `iscsiadm -m node -T "
                           f"{s.target_iqn} -p {s.portal} --logout`")
