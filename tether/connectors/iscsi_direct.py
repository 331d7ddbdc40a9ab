"""``iscsi-direct``: QEMU logs in to the target itself (libiscsi) as this
host's initiator; the guest gets a libvirt network disk.  No host block
device exists, so there is no host session to leak and nothing of the
tenant's data is visible on the host.  Connecting stores the CHAP secret
in libvirt; disconnecting removes it (QEMU's session ends with the disk)."""

from __future__ import annotations

import logging
import platform
from typing import Protocol

from tether.connection import ConnectionInfo, Connector
from tether.connectors.base import HostSession
from tether.virt.driver import NetworkDiskSource

LOG = logging.getLogger(__name__)


class SecretStore(Protocol):
    def define_chap_secret(self, volume_id: str, username: str, password: str) -> str: ...

    def undefine_chap_secret(self, volume_id: str) -> None: ...


class IscsiDirectConnector:
    connector_type = "iscsi-direct"

    def __init__(self, secrets: SecretStore, initiator_iqn: str, host: str,
                 ip: str | None = None) -> None:
        self.secrets = secrets
        self.initiator_iqn = initiator_iqn
        self.host = host
        self.ip = ip

    def properties(self) -> Connector:
        return Connector(host=self.host, initiator=self.initiator_iqn, ip=self.ip,
                         multipath=False, platform=platform.machine(), os_type="linux",
                         connector_type=self.connector_type)

    def connect(self, info: ConnectionInfo) -> NetworkDiskSource:
        host, _, port = info.target_portal.rpartition(":")
        secret_uuid = self.secrets.define_chap_secret(info.volume_id, info.auth_username,
                                                      info.auth_password)
        return NetworkDiskSource(
            target_iqn=info.target_iqn, lun=info.target_lun, host=host.strip("[]"),
            port=int(port), initiator_iqn=self.initiator_iqn,
            auth_username=info.auth_username, secret_uuid=secret_uuid)

    def disconnect(self, info: ConnectionInfo, *, force: bool = False) -> None:
        self.secrets.undefine_chap_secret(info.volume_id)

    def host_sessions(self) -> frozenset[HostSession]:
        """None: QEMU logs in itself (the target shows its sessions, from
        this host's initiator name)."""
        return frozenset()
