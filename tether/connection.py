"""The two values the compute and storage sides exchange to connect a volume
(the Cinder v3 REST contract): the host's *connector* and the storage side's
*connection_info*.  Frozen, validated on the way in, plain dicts on the wire."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tether.exceptions import InvalidInput

_IQN_RE = re.compile(
    r"^(iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.\-]*(:[A-Za-z0-9.:_\-]+)?"
    r"|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$"
)


def valid_iqn(name: str) -> bool:
    return bool(_IQN_RE.match(name)) and len(name) <= 223


@dataclass(frozen=True)
class Connector:
    """What a host tells storage about itself (os-brick's connector properties)."""

    host: str
    initiator: str
    ip: str | None = None
    multipath: bool = False
    platform: str | None = None
    os_type: str | None = None
    connector_type: str | None = None  # "iscsi-direct" / "iscsi"
    mountpoint: str | None = None  # the guest device, e.g. /dev/sdb (Nova adds it on update)

    @classmethod
    def from_dict(cls, data: Any) -> Connector:
        if not isinstance(data, dict):
            raise InvalidInput("Invalid connector: expected an object with 'initiator' "
                               "and 'host'.")
        initiator = data.get("initiator")
        if not isinstance(initiator, str) or not initiator:
            raise InvalidInput("Invalid connector: connector doesn't have required "
                               "information: initiator (the host's iSCSI IQN).")
        if not valid_iqn(initiator):
            raise InvalidInput(f"Invalid connector: initiator {initiator!r} is not an "
                               "iSCSI name (iqn.YYYY-MM.domain[:id], eui. or naa.).")
        host = data.get("host")
        if host is not None and not isinstance(host, str):
            raise InvalidInput("Invalid connector: 'host' must be a string.")
        ip = data.get("ip")
        return cls(
            host=host or "", initiator=initiator,
            ip=ip if isinstance(ip, str) else None,
            multipath=bool(data.get("multipath", False)),
            platform=data.get("platform") if isinstance(data.get("platform"), str) else None,
            os_type=data.get("os_type") if isinstance(data.get("os_type"), str) else None,
            connector_type=(data.get("connector_type")
                            if isinstance(data.get("connector_type"), str) else None),
            mountpoint=(data.get("mountpoint")
                        if isinstance(data.get("mountpoint"), str) else None),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "initiator": self.initiator,
                               "multipath": self.multipath}
        for key in ("ip", "platform", "os_type", "connector_type", "mountpoint"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class ConnectionInfo:
    """How to reach an exported volume (``driver_volume_type: iscsi``)."""

    volume_id: str
    target_iqn: str
    target_portal: str
    target_lun: int
    auth_username: str
    auth_password: str = field(repr=False)
    access_mode: str = "rw"
    driver_volume_type: str = "iscsi"

    def to_dict(self, *, with_secret: bool) -> dict[str, Any]:
        """The wire form; the CHAP secret only for admin/service callers."""
        data: dict[str, Any] = {
            "target_discovered": False,
            "target_iqn": self.target_iqn,
            "target_portal": self.target_portal,
            "target_lun": self.target_lun,
            "volume_id": self.volume_id,
            "auth_method": "CHAP",
            "auth_username": self.auth_username,
            "access_mode": self.access_mode,
            "encrypted": False,
            "discard": False,
        }
        if with_secret:
            data["auth_password"] = self.auth_password
        return {"driver_volume_type": self.driver_volume_type, "data": data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConnectionInfo:
        """Read either the nested form or the attachments API's flat one
        (``data``'s members plus ``driver_volume_type``)."""
        if data.get("driver_volume_type") != "iscsi":
            raise InvalidInput(f"unsupported driver_volume_type "
                               f"{data.get('driver_volume_type')!r}")
        d = data["data"] if isinstance(data.get("data"), dict) else data
        return cls(volume_id=d["volume_id"], target_iqn=d["target_iqn"],
                   target_portal=d["target_portal"], target_lun=int(d["target_lun"]),
                   auth_username=d.get("auth_username", ""),
                   auth_password=d.get("auth_password", ""),
                   access_mode=d.get("access_mode", "rw"))
