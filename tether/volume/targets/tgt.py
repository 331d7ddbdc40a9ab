"""Linux tgt (``tgtd``) as the iSCSI target (requests reach tgtd through
:mod:`tether.volume.targets.tgtadm`: its socket, or the tgtadm command).

One target per exported volume (IQN from :func:`target_iqn`), LUN 1 backed by
the volume file, a one-way CHAP account bound as the incoming user, and an ACL
of initiator names (never ``ALL``).  Every operation compares the wanted state
with what tgtd holds and only changes the difference, so it is safe to repeat
after a crash, a retry or a tgtd restart.  What tgtd holds is read once
(``show target``) and then kept up to date by our own changes; an
operation that tgtd refuses because the state moved under us (tgtd restarted,
someone else's tgtadm) reloads it and runs once more.  CHAP passwords are
secrets: never on a log line or in an error message.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.executor import Runner
from tether.volume.targets.base import (
    IQN_PREFIX,
    ExportLocation,
    ExportSpec,
    ExportState,
    TargetError,
    target_iqn,
)
from tether.volume.targets.tgtadm import AdminError, AutoAdmin, Request, TgtAdmin, codes

LOG = logging.getLogger(__name__)
LUN = 1

_ACCOUNT_EXISTS, _NO_ACCOUNT = codes("account_exists"), codes("no_account")
_ACL_EXISTS, _NO_ACL = codes("acl_exists"), codes("no_acl")
_NO_TARGET = codes("no_target")

_TARGET_RE = re.compile(r"^Target (\d+): (\S+)$")


@dataclass
class ShownTarget:
    """One target of ``tgtadm --op show --mode target``."""

    tid: int
    iqn: str
    accounts: list[str] = field(default_factory=list)
    acl: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    backing: dict[int, str] = field(default_factory=dict)


def parse_show(text: str) -> dict[str, ShownTarget]:
    """Targets by IQN, from ``tgtadm --op show --mode target`` output."""
    targets: dict[str, ShownTarget] = {}
    current: ShownTarget | None = None
    section = ""
    lun: int | None = None
    for raw in text.splitlines():
        line = raw.strip()
        m = _TARGET_RE.match(raw)
        if m:
            current = ShownTarget(int(m.group(1)), m.group(2))
            targets[current.iqn] = current
            section, lun = "", None
            continue
        if current is None or not line:
            continue
        if line.endswith("information:"):
            section = line[: -len(" information:")]
            continue
        if section == "I_T nexus" and line.startswith("Initiator:"):
            current.sessions.append(line.split()[1])
        elif section == "LUN" and line.startswith("LUN:"):
            lun = int(line.split()[1])
        elif section == "LUN" and line.startswith("Backing store path:") and lun is not None:
            path = line.split(":", 1)[1].strip()
            if path != "None":
                current.backing[lun] = path
        elif section == "Account":
            current.accounts.append(line.split()[0])
        elif section == "ACL":
            current.acl.append(line)
    return targets


def parse_accounts(text: str) -> frozenset[str]:
    """User names from ``tgtadm --op show --mode account`` (``Account list:``
    then one name a line; nothing at all when there is none)."""
    names = set()
    listing = False
    for raw in text.splitlines():
        line = raw.strip()
        if line == "Account list:":
            listing = True
        elif listing and line:
            names.add(line.split()[0])
    return frozenset(names)


class TgtTarget:
    def __init__(self, runner: Runner, portal_ip: str, portal_port: int = 3260,
                 control_port: int = 0, iqn_prefix: str = IQN_PREFIX,
                 admin: TgtAdmin | None = None) -> None:
        """``admin``: how requests reach tgtd (default: its socket where the
        installed tgt allows, else tgtadm run with ``runner``)."""
        self.admin = admin or AutoAdmin(runner, control_port)
        self.portal = f"{portal_ip}:{portal_port}"
        self.control_port = control_port
        self.iqn_prefix = iqn_prefix
        # tid allocation reads then writes: serialise this process's changes
        self._lock = threading.RLock()
        self._known: dict[str, ShownTarget] | None = None  # tgtd's targets, by IQN

    # -- plumbing ------------------------------------------------------------

    def _adm(self, op: str, mode: str, *, tid: int | None = None, lun: int | None = None,
             force: bool = False, tolerate: frozenset[str] = frozenset(),
             secrets: tuple[str, ...] = (), **params: str) -> str:
        """One request to tgtd; an error whose code is in ``tolerate`` means
        the state already is what we want.  ``params`` spell tgtd's keys with
        ``_`` for ``-`` (``initiator_name``)."""
        req = Request(op, mode, tid, lun, force,
                      tuple((k.replace("_", "-"), v) for k, v in params.items()), secrets)
        try:
            return self.admin.request(req)
        except AdminError as exc:
            if exc.code in tolerate:
                return ""
            raise

    def _show(self) -> dict[str, ShownTarget]:
        return parse_show(self._adm("show", "target"))

    def _targets(self) -> dict[str, ShownTarget]:
        """What tgtd holds, as last read or changed by us (under ``_lock``)."""
        if self._known is None:
            self._known = self._show()
        return self._known

    def _retrying(self, change: Callable[[], None]) -> None:
        """Run ``change``; if tgtd refuses it, re-read tgtd's state and run it
        once more (the first failure usually means our view was stale)."""
        with self._lock:
            try:
                change()
            except TargetError:
                self._known = None
                change()

    def _iqn(self, volume_id: str) -> str:
        if self.iqn_prefix == IQN_PREFIX:
            return target_iqn(volume_id)
        return f"{self.iqn_prefix}:volume-{volume_id}"

    def _volume_of(self, iqn: str) -> str | None:
        prefix = f"{self.iqn_prefix}:volume-"
        return iqn[len(prefix):] if iqn.startswith(prefix) else None

    # -- TargetDriver ----------------------------------------------------------

    def location(self, volume_id: str) -> ExportLocation:
        return ExportLocation(self._iqn(volume_id), self.portal, LUN)

    def export(self, spec: ExportSpec) -> ExportLocation:
        self._retrying(lambda: self._export(spec))
        return self.location(spec.volume_id)

    def _export(self, spec: ExportSpec) -> None:
        iqn = self._iqn(spec.volume_id)
        known = self._targets()
        target = known.get(iqn)
        if target is None:
            new_tid = max((t.tid for t in known.values()), default=0) + 1
            self._adm("new", "target", tid=new_tid, targetname=iqn)
            target = known[iqn] = ShownTarget(new_tid, iqn)
        tid = target.tid
        if target.backing.get(LUN) != spec.backing_path:
            if LUN in target.backing:
                self._adm("delete", "logicalunit", tid=tid, lun=LUN)
                del target.backing[LUN]
            self._adm("new", "logicalunit", tid=tid, lun=LUN, path=spec.backing_path,
                      bstype="rdwr")
            target.backing[LUN] = spec.backing_path
        if spec.chap.username not in target.accounts:
            self._adm("new", "account", user=spec.chap.username, password=spec.chap.password,
                      tolerate=_ACCOUNT_EXISTS, secrets=(spec.chap.password,))
            self._adm("bind", "account", tid=tid, user=spec.chap.username)
            target.accounts.append(spec.chap.username)
        for stale in set(target.accounts) - {spec.chap.username}:
            self._adm("unbind", "account", tid=tid, user=stale, tolerate=_NO_ACCOUNT)
            target.accounts.remove(stale)
        for initiator in sorted(set(spec.initiators) - set(target.acl)):
            self._adm("bind", "target", tid=tid, initiator_name=initiator,
                      tolerate=_ACL_EXISTS)
            target.acl.append(initiator)
        for initiator in sorted(set(target.acl) - set(spec.initiators)):
            self._adm("unbind", "target", tid=tid, initiator_name=initiator, tolerate=_NO_ACL)
            target.acl.remove(initiator)
        LOG.debug("tgt: %s (tid %s) exported to %s", iqn, tid, sorted(spec.initiators))

    def unexport(self, volume_id: str) -> None:
        iqn = self._iqn(volume_id)

        def change() -> None:
            target = self._targets().get(iqn)
            if target is None:
                return
            # --force: drop the sessions of initiators still logged in
            self._adm("delete", "target", tid=target.tid, force=True, tolerate=_NO_TARGET)
            self._targets().pop(iqn, None)
            for account in target.accounts:
                self._adm("delete", "account", user=account, tolerate=_NO_ACCOUNT)
            LOG.debug("tgt: %s (tid %d) removed", iqn, target.tid)

        self._retrying(change)

    def allow(self, volume_id: str, initiator_iqn: str) -> None:
        def change() -> None:
            target = self._targets().get(self._iqn(volume_id))
            if target is None:
                raise TargetError(f"volume {volume_id} is not exported: cannot admit "
                                  f"{initiator_iqn}")
            self._adm("bind", "target", tid=target.tid, initiator_name=initiator_iqn,
                      tolerate=_ACL_EXISTS)
            if initiator_iqn not in target.acl:
                target.acl.append(initiator_iqn)

        self._retrying(change)

    def deny(self, volume_id: str, initiator_iqn: str) -> None:
        def change() -> None:
            target = self._targets().get(self._iqn(volume_id))
            if target is None:
                return
            self._adm("unbind", "target", tid=target.tid, initiator_name=initiator_iqn,
                      tolerate=_NO_ACL)
            if initiator_iqn in target.acl:
                target.acl.remove(initiator_iqn)

        self._retrying(change)

    def exports(self) -> dict[str, ExportState]:
        """What tgtd holds now, read back from it (and remembered)."""
        with self._lock:
            self._known = self._show()
            known = dict(self._known)
        out = {}
        for iqn, t in known.items():
            volume_id = self._volume_of(iqn)
            if volume_id is None:
                continue
            out[volume_id] = ExportState(volume_id, iqn, frozenset(t.acl), t.backing.get(LUN),
                                         t.accounts[0] if t.accounts else None,
                                         frozenset(t.sessions))
        return out

    def sessions(self, volume_id: str) -> frozenset[str]:
        target = self._show().get(self._iqn(volume_id))  # sessions change on their own
        return frozenset(target.sessions) if target else frozenset()

    def accounts(self) -> frozenset[str]:
        return parse_accounts(self._adm("show", "account"))

    def remove_account(self, username: str) -> None:
        with self._lock:
            # tgtd unbinds it from its targets itself
            self._adm("delete", "account", user=username, tolerate=_NO_ACCOUNT)
            for target in (self._known or {}).values():
                if username in target.accounts:
                    target.accounts.remove(username)
        LOG.debug("tgt: account %s removed", username)
