"""How this host connects and disconnects a server's volumes: the one place,
used by attach, detach, server delete, shelve offload, unshelve and every
rollback.

* Disconnect only what this host connected: the mapping's stored
  connection_info (written right after storage exported the volume, before
  the host connects, so a crash in between still leaves it to undo).
* Never disconnect a volume another live mapping on this host uses
  (multiattach: two servers here share the host's connection).
* Under the backend's host-wide lock when its volumes share targets (one
  session serves several volumes; a logout must not run under a login).
* ``force`` on server delete: the guest is gone for good, a device that
  cannot be flushed must not keep the host connection forever.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager

from tether.compute import locks
from tether.compute.locks import HostLocks
from tether.compute.repository import ComputeRepository
from tether.connection import ConnectionInfo, Connector
from tether.connectors.base import VolumeConnector
from tether.db.records import BdmRecord
from tether.virt.driver import DiskSource

LOG = logging.getLogger(__name__)


class HostConnections:
    def __init__(self, repo: ComputeRepository, connector: VolumeConnector, host: str,
                 host_locks: HostLocks) -> None:
        self.repo = repo
        self.connector = connector
        self.host = host
        self.locks = host_locks

    def properties(self, mountpoint: str | None = None) -> Connector:
        """This host as storage must see it, for a device ``mountpoint``."""
        props = self.connector.properties()
        if mountpoint is None:
            return props
        return dataclasses.replace(props, mountpoint=mountpoint)

    @contextmanager
    def guarded(self, shared_target: str | None) -> Iterator[None]:
        """The host-wide lock of a backend that shares targets (nothing
        otherwise); an operation holds it around its whole flow."""
        with locks.maybe(self.locks, shared_target):
            yield

    def connect(self, bdm: BdmRecord, info: ConnectionInfo) -> DiskSource:
        with self.guarded(bdm.shared_target):
            return self.connector.connect(info)

    def disconnect(self, bdm: BdmRecord, *, force: bool = False) -> bool:
        """Undo this host's connection of ``bdm``; False when there was
        nothing to undo or another mapping here still uses the volume."""
        if not bdm.connection_info:
            return False
        with self.guarded(bdm.shared_target):
            with self.repo.begin() as c:
                shared = self.repo.other_users_on_host(c, bdm, self.host)
            if shared:
                LOG.info("Detected multiple connections on this host for volume %s, "
                         "skipping target disconnect", bdm.volume_id)
                return False
            self.connector.disconnect(ConnectionInfo.from_dict(bdm.connection_info),
                                      force=force)
        return True
