"""How a host reaches a volume: ``connect`` turns the storage side's
connection_info into a disk source the hypervisor can use, ``disconnect``
undoes it.  ``iscsi-direct`` (QEMU's own initiator) and ``iscsi`` (the host's
initiator through os-brick) implement it; ``fake`` is for unit tests."""

from __future__ import annotations

from typing import Protocol

from tether.connection import ConnectionInfo, Connector
from tether.virt.driver import DiskSource


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
