"""The block-storage side's only way to the compute side: the Compute REST
API, with the service token (as Cinder asks Nova).

Block storage needs one answer from compute: whether a server still uses an
attachment of a volume, before a caller who is not a service may detach it
on the storage side (CVE-2023-2088: a LUN unmapped under a guest that still
has the disk).
"""

from __future__ import annotations

import logging
from typing import Any

from tether.exceptions import BackendError
from tether.identity.credentials import TokenSource
from tether.restclient import Reply, Transport, TransportFailed

LOG = logging.getLogger(__name__)
MICROVERSION = "compute 2.89"


class ComputeClient:
    def __init__(self, transport: Transport, credentials: TokenSource) -> None:
        self.transport = transport
        self.credentials = credentials
        self._headers = {"OpenStack-API-Version": MICROVERSION, "Accept": "application/json"}

    def _get(self, path: str) -> Reply:
        token = self.credentials.token()
        reply = self.transport.request("GET", path, {**self._headers, "X-Auth-Token": token},
                                       None)
        if reply.status == 401:  # expired or revoked: once more with a fresh token
            self.credentials.invalidate(token)
            reply = self.transport.request(
                "GET", path, {**self._headers, "X-Auth-Token": self.credentials.token()},
                None)
        return reply

    def server_uses_volume(self, server_id: str, volume_id: str,
                           attachment_id: str | None = None) -> bool:
        """Whether the server still uses this attachment of the volume: the
        server exists and is not being deleted, and compute records the volume
        attached to it (by ``attachment_id``, when given: compute holding
        another attachment of the volume does not make this one used, as in
        Cinder's check).  When compute cannot say, the answer is yes: refusing
        a user's detach is safe, allowing it may not be."""
        try:
            server = self._ask(f"/servers/{server_id}", server_id, volume_id)
            if server is None or server.get("server", {}).get(
                    "OS-EXT-STS:task_state") == "deleting":
                return False
            bdm = self._ask(f"/servers/{server_id}/os-volume_attachments/{volume_id}",
                            server_id, volume_id)
        except _CannotSay:
            return True
        if bdm is None:
            return False
        held = bdm.get("volumeAttachment", {}).get("attachment_id")
        return attachment_id is None or held in (None, attachment_id)

    def _ask(self, path: str, server_id: str, volume_id: str) -> dict[str, Any] | None:
        """The JSON body, None for a 404; _CannotSay when compute is down."""
        try:
            reply = self._get(path)
        except TransportFailed:
            LOG.exception("compute could not be asked whether %s uses %s", server_id,
                          volume_id)
            raise _CannotSay from None
        if reply.status == 404:
            return None
        if reply.status != 200:
            LOG.error("compute answered %d on whether %s uses %s", reply.status, server_id,
                      volume_id)
            if reply.status >= 500:
                raise _CannotSay
            raise BackendError(f"compute refused to say whether server {server_id} uses "
                               f"volume {volume_id} ({reply.status})")
        body = reply.json()
        return body if isinstance(body, dict) else {}


class _CannotSay(Exception):
    """Compute is unreachable or failing."""
