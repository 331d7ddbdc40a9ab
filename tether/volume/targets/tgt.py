"""Linux tgt (``tgtd``) as the iSCSI target, driven through ``tgtadm``.

One target per exported volume (IQN from :func:`target_iqn`), LUN 1 backed by
the volume file, a one-way CHAP account bound as the incoming user, and an ACL
of initiator names (never ``ALL``).  Every operation compares the wanted state
with what tgtd holds and only changes the difference, so it is safe to repeat
after a crash, a retry or a tgtd restart.  What tgtd holds is read once
(``tgtadm --op show``) and then kept up to date by our own changes; an
operation that tgtd refuses because the state moved under us (tgtd restarted,
someone else's tgtadm) reloads it and runs once more.  CHAP passwords go to
tgtadm as secrets and never reach a log line or an error message.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.executor import CommandError, Runner
from tether.volume.targets.base import (
    IQN_PREFIX,
    ExportLocation,
    ExportSpec,
    ExportState,
    TargetError,
    target_iqn,
)

LOG = logging.getLogger(__name__)
LUN = 1

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


class TgtTarget:
    def __init__(self, runner: Runner, portal_ip: str, portal_port: int = 3260,
                 control_port: int = 0, iqn_prefix: str = IQN_PREFIX) -> None:
        self.runner = runner
        self.portal = f"{portal_ip}:{portal_port}"
        self.control_port = control_port
        self.iqn_prefix = iqn_prefix
        # tid allocation reads then writes: serialise this process's changes
        self._lock = threading.RLock()
        self._known: dict[str, ShownTarget] | None = None  # tgtd's targets, by IQN

    # -- plumbing ------------------------------------------------------------

    def _adm(self, *args: str, secrets: tuple[str, ...] = ()) -> str:
        argv = ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", *args]
        try:
            return self.runner.run(argv, secrets=secrets).stdout
        except CommandError as exc:
            raise TargetError(f"tgtadm failed: {exc}") from None
        except OSError as exc:
            raise TargetError(f"cannot run tgtadm: {exc}") from None

    def _adm_ok(self, *args: str, tolerate: str, secrets: tuple[str, ...] = ()) -> None:
        """Run tgtadm; an error whose message contains ``tolerate`` means the
        state already is what we want."""
        try:
            self._adm(*args, secrets=secrets)
        except TargetError as exc:
            if tolerate not in str(exc):
                raise

    def _show(self) -> dict[str, ShownTarget]:
        return parse_show(self._adm("--op", "show", "--mode", "target"))

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
            self._adm("--op", "new", "--mode", "target", "--tid", str(new_tid),
                      "--targetname", iqn)
            target = known[iqn] = ShownTarget(new_tid, iqn)
        tid = str(target.tid)
        if target.backing.get(LUN) != spec.backing_path:
            if LUN in target.backing:
                self._adm("--op", "delete", "--mode", "logicalunit", "--tid", tid,
                          "--lun", str(LUN))
                del target.backing[LUN]
            self._adm("--op", "new", "--mode", "logicalunit", "--tid", tid,
                      "--lun", str(LUN), "--backing-store", spec.backing_path,
                      "--bstype", "rdwr")
            target.backing[LUN] = spec.backing_path
        if spec.chap.username not in target.accounts:
            self._adm_ok("--op", "new", "--mode", "account", "--user", spec.chap.username,
                         "--password", spec.chap.password, tolerate="already exists",
                         secrets=(spec.chap.password,))
            self._adm("--op", "bind", "--mode", "account", "--tid", tid,
                      "--user", spec.chap.username)
            target.accounts.append(spec.chap.username)
        for stale in set(target.accounts) - {spec.chap.username}:
            self._adm_ok("--op", "unbind", "--mode", "account", "--tid", tid,
                         "--user", stale, tolerate="can't find")
            target.accounts.remove(stale)
        for initiator in sorted(set(spec.initiators) - set(target.acl)):
            self._adm_ok("--op", "bind", "--mode", "target", "--tid", tid,
                         "--initiator-name", initiator, tolerate="already exists")
            target.acl.append(initiator)
        for initiator in sorted(set(target.acl) - set(spec.initiators)):
            self._adm_ok("--op", "unbind", "--mode", "target", "--tid", tid,
                         "--initiator-name", initiator, tolerate="does not exist")
            target.acl.remove(initiator)
        LOG.debug("tgt: %s (tid %s) exported to %s", iqn, tid, sorted(spec.initiators))

    def unexport(self, volume_id: str) -> None:
        iqn = self._iqn(volume_id)

        def change() -> None:
            target = self._targets().get(iqn)
            if target is None:
                return
            # --force: drop the sessions of initiators still logged in
            self._adm_ok("--op", "delete", "--force", "--mode", "target",
                         "--tid", str(target.tid), tolerate="can't find the target")
            self._targets().pop(iqn, None)
            for account in target.accounts:
                self._adm_ok("--op", "delete", "--mode", "account", "--user", account,
                             tolerate="can't find the account")
            LOG.debug("tgt: %s (tid %d) removed", iqn, target.tid)

        self._retrying(change)

    def allow(self, volume_id: str, initiator_iqn: str) -> None:
        def change() -> None:
            target = self._targets().get(self._iqn(volume_id))
            if target is None:
                raise TargetError(f"volume {volume_id} is not exported: cannot admit "
                                  f"{initiator_iqn}")
            self._adm_ok("--op", "bind", "--mode", "target", "--tid", str(target.tid),
                         "--initiator-name", initiator_iqn, tolerate="already exists")
            if initiator_iqn not in target.acl:
                target.acl.append(initiator_iqn)

        self._retrying(change)

    def deny(self, volume_id: str, initiator_iqn: str) -> None:
        def change() -> None:
            target = self._targets().get(self._iqn(volume_id))
            if target is None:
                return
            self._adm_ok("--op", "unbind", "--mode", "target", "--tid", str(target.tid),
                         "--initiator-name", initiator_iqn, tolerate="does not exist")
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
                                         t.accounts[0] if t.accounts else None)
        return out

    def sessions(self, volume_id: str) -> frozenset[str]:
        target = self._show().get(self._iqn(volume_id))  # sessions change on their own
        return frozenset(target.sessions) if target else frozenset()
