"""How a host reaches a volume: ``connect`` turns the storage side's
connection_info into a disk source the hypervisor can use, ``disconnect``
undoes it.  ``iscsi-direct`` (QEMU's own initiator) and ``iscsi`` (the host's
initiator through os-brick) implement it; ``fake`` is for unit tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tether.connection import ConnectionInfo, Connector
from tether.virt.driver import DiskSource


@dataclass(frozen=True)
class HostSession:
    """An iSCSI session this host's own initiator holds."""

    target_iqn: str
    portal: str  # "127.0.0.1:3260", "[fe80::1]:3260"


class VolumeConnector(Protocol):
    connector_type: str

    def properties(self) -> Connector:
        """This host as storage must see it (initiator IQN, host name ...)."""
        ...

    def connect(self, info: ConnectionInfo) -> DiskSource:
        """Make the volume reachable on this host; idempotent."""
        ...

    def disconnect(self, info: ConnectionInfo, *, force: bool = False) -> None:
        """Undo ``connect``; no-op when already disconnected.  ``force``: the
        guest is gone for good (a server being deleted): go on past a device
        that cannot be flushed, as os-brick's force and Nova's delete do."""
        ...

    def host_sessions(self) -> frozenset[HostSession]:
        """The iSCSI sessions this host's own (kernel) initiator holds now,
        to any target; none for a connector whose sessions are QEMU's (they
        show only on the target)."""
        ...
