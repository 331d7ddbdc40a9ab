"""The narrow interface between the volume service and an iSCSI target.

One target per exported volume, LUN 1, one-way CHAP, and an ACL that admits
exactly the initiators the volume service names.  Implementations: ``tgt``
(Linux tgtd via tgtadm) and ``fake`` (in memory, for unit tests and demos).
Every method is idempotent: calling it again after a crash or a retry is safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

IQN_PREFIX = "iqn.2010-10.org.tether"


def target_iqn(volume_id: str) -> str:
    return f"{IQN_PREFIX}:volume-{volume_id}"


@dataclass(frozen=True)
class ChapCredentials:
    """One-way CHAP: what the initiator presents to the target."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ExportSpec:
    """Everything a target needs to (re)create one volume's export."""

    volume_id: str
    backing_path: str
    chap: ChapCredentials
    initiators: frozenset[str] = frozenset()


@dataclass(frozen=True)
class ExportLocation:
    """Where an initiator finds an export (goes into connection_info)."""

    target_iqn: str
    target_portal: str  # "host:port"
    target_lun: int


@dataclass(frozen=True)
class ExportState:
    """What the target actually holds for one volume, read back from it."""

    volume_id: str
    target_iqn: str
    initiators: frozenset[str]
    backing_path: str | None
    chap_username: str | None
    sessions: frozenset[str] = frozenset()  # initiators logged in now


class TargetError(Exception):
    """The target refused or failed an operation; message is safe to log."""


class TargetDriver(Protocol):
    def export(self, spec: ExportSpec) -> ExportLocation:
        """Create (or complete) the target, LUN 1, CHAP binding and ACL of ``spec``."""
        ...

    def unexport(self, volume_id: str) -> None:
        """Remove the target of ``volume_id`` (and its sessions); no-op if absent."""
        ...

    def allow(self, volume_id: str, initiator_iqn: str) -> None:
        """Admit ``initiator_iqn`` to the volume's target; no-op if already admitted."""
        ...

    def deny(self, volume_id: str, initiator_iqn: str) -> None:
        """Remove ``initiator_iqn`` from the ACL; no-op if not admitted."""
        ...

    def location(self, volume_id: str) -> ExportLocation:
        """Where the export of ``volume_id`` is (does not check it exists)."""
        ...

    def exports(self) -> dict[str, ExportState]:
        """All volume exports the target holds now, by volume id."""
        ...

    def sessions(self, volume_id: str) -> frozenset[str]:
        """Initiator IQNs with a live session on the volume's target."""
        ...

    def accounts(self) -> frozenset[str]:
        """The user names of every CHAP account the target holds, bound to a
        target or not (never a password)."""
        ...

    def remove_account(self, username: str) -> None:
        """Delete a CHAP account (from every target it is bound to); no-op if absent."""
        ...
