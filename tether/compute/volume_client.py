"""The compute side's only way to block storage: the Cinder v3 REST API.

A small typed client that authenticates with the service token, like Nova's
service user.  Errors come back as the domain errors the Compute API maps to
the right status (404 for a missing volume, 400 for a refused state change),
so a storage answer passes through to the user unchanged.

The requests travel over a :mod:`tether.restclient` transport: HTTP, or
the Block Storage WSGI app called in this process (``tether serve``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from tether.connection import ConnectionInfo, Connector
from tether.exceptions import (
    AttachmentNotFound,
    BackendError,
    Conflict,
    InvalidVolume,
    TetherError,
    VolumeNotFound,
)
from tether.identity.credentials import TokenSource
from tether.restclient import HttpTransport, Reply, Transport, TransportFailed

LOG = logging.getLogger(__name__)
MICROVERSION = "volume 3.71"
RETRY_STATUSES = (500, 502, 503, 504)


@dataclass(frozen=True)
class VolumeRef:
    """What compute needs to know about a volume."""

    id: str
    status: str
    size: int
    multiattach: bool
    shared_targets: bool
    service_uuid: str | None
    project_id: str
    attachments: tuple[dict[str, Any], ...]

    def attachment_for(self, server_uuid: str) -> str | None:
        for a in self.attachments:
            if a.get("server_id") == server_uuid:
                aid: str | None = a.get("attachment_id")
                return aid
        return None


@dataclass(frozen=True)
class AttachmentRef:
    id: str
    status: str
    connection_info: ConnectionInfo | None


class VolumeClient:
    def __init__(self, transport: Transport, credentials: TokenSource,
                 retries: int = 3) -> None:
        self.transport = transport
        self.retries = retries
        self.credentials = credentials
        self._headers = {"OpenStack-API-Version": MICROVERSION,
                         "Content-Type": "application/json", "Accept": "application/json"}

    @classmethod
    def over_http(cls, endpoint: str, credentials: TokenSource, timeout: float = 60.0
                  ) -> VolumeClient:
        return cls(HttpTransport(endpoint, timeout), credentials)

    def _request(self, method: str, path: str, data: bytes | None) -> Reply:
        """One request with the service's token; a token refused (expired,
        revoked) is given back and the request made once more with a new one."""
        token = self.credentials.token()
        resp = self.transport.request(method, path, {**self._headers, "X-Auth-Token": token},
                                      data)
        if resp.status == 401:
            self.credentials.invalidate(token)
            resp = self.transport.request(
                method, path, {**self._headers, "X-Auth-Token": self.credentials.token()},
                data)
        return resp

    def close(self) -> None:
        self.transport.close()

    def _call(self, method: str, path: str, body: Any = None, *,
              not_found: TetherError | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            try:
                resp = self._request(method, path, data)
            except TransportFailed as exc:
                if attempt == self.retries:
                    raise BackendError(str(exc)) from exc
                time.sleep(0.2 * (attempt + 1))
                continue
            if resp.status in RETRY_STATUSES and attempt < self.retries:
                LOG.warning("block storage %s %s answered %d; retrying", method, path,
                            resp.status)
                time.sleep(0.2 * (attempt + 1))
                continue
            break
        if resp.status < 400:
            return resp.json()
        message = _message(resp)
        if resp.status == 404 and not_found is not None:
            raise not_found
        if resp.status in (400, 404):
            raise InvalidVolume(message)
        if resp.status == 409:
            raise Conflict(message)
        raise BackendError(f"block storage {method} {path} failed ({resp.status}): "
                           f"{message}")

    # volumes
    def get_volume(self, volume_id: str) -> VolumeRef:
        v = self._call("GET", f"/volumes/{volume_id}",
                       not_found=VolumeNotFound(volume_id))["volume"]
        return VolumeRef(id=v["id"], status=v["status"], size=v["size"],
                         multiattach=v["multiattach"], shared_targets=v["shared_targets"],
                         service_uuid=v.get("service_uuid"),
                         project_id=v["os-vol-tenant-attr:tenant_id"],
                         attachments=tuple(v["attachments"]))

    def delete_volume(self, volume_id: str) -> None:
        self._call("DELETE", f"/volumes/{volume_id}", not_found=VolumeNotFound(volume_id))

    def _action(self, volume_id: str, name: str, args: dict[str, Any] | None = None) -> Any:
        return self._call("POST", f"/volumes/{volume_id}/action", {name: args or {}},
                          not_found=VolumeNotFound(volume_id))

    def begin_detaching(self, volume_id: str) -> None:
        self._action(volume_id, "os-begin_detaching")

    def roll_detaching(self, volume_id: str) -> None:
        self._action(volume_id, "os-roll_detaching")

    def terminate_connection(self, volume_id: str, connector: Connector) -> None:
        self._action(volume_id, "os-terminate_connection", {"connector": connector.to_dict()})

    def detach(self, volume_id: str, attachment_id: str | None) -> None:
        self._action(volume_id, "os-detach", {"attachment_id": attachment_id})

    # attachments
    def attachment_create(self, volume_id: str, server_uuid: str) -> AttachmentRef:
        a = self._call("POST", "/attachments", {"attachment": {
            "volume_uuid": volume_id, "instance_uuid": server_uuid}},
            not_found=VolumeNotFound(volume_id))["attachment"]
        return AttachmentRef(a["id"], a["status"], None)

    def attachment_update(self, attachment_id: str, connector: Connector) -> AttachmentRef:
        a = self._call("PUT", f"/attachments/{attachment_id}",
                       {"attachment": {"connector": connector.to_dict()}},
                       not_found=AttachmentNotFound(attachment_id))["attachment"]
        return AttachmentRef(a["id"], a["status"], ConnectionInfo.from_dict(a["connection_info"]))

    def attachment_status(self, attachment_id: str) -> str:
        a = self._call("GET", f"/attachments/{attachment_id}",
                       not_found=AttachmentNotFound(attachment_id))["attachment"]
        status: str = a["status"]
        return status

    def attachments_of(self, volume_id: str, server_uuid: str) -> list[str]:
        """The ids of the server's live attachments of the volume."""
        rows = self._call("GET", f"/attachments?all_tenants=1&volume_id={volume_id}"
                                 f"&instance_id={server_uuid}")["attachments"]
        return [a["id"] for a in rows]

    def attachment_complete(self, attachment_id: str) -> None:
        self._call("POST", f"/attachments/{attachment_id}/action", {"os-complete": None},
                   not_found=AttachmentNotFound(attachment_id))

    def attachment_delete(self, attachment_id: str) -> None:
        """Idempotent: an attachment already gone is fine (a retried detach)."""
        try:
            self._call("DELETE", f"/attachments/{attachment_id}",
                       not_found=AttachmentNotFound(attachment_id))
        except AttachmentNotFound:
            LOG.info("attachment %s already deleted", attachment_id)


def _message(resp: Reply) -> str:
    try:
        (fault,) = resp.json().values()
        return str(fault["message"])
    except Exception:
        return resp.body[:300].decode(errors="replace")
