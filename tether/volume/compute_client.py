"""The block-storage side's only way to the compute side: the Compute REST
API, with the service token (as Cinder asks Nova).

Block storage needs one answer from compute: whether a server still uses a
volume, before a caller who is not a service may delete the attachment
(CVE-2023-2088: a LUN unmapped under a guest that still has the disk).
"""

from __future__ import annotations

import logging

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

    def server_uses_volume(self, server_id: str, volume_id: str) -> bool:
        """Whether the server has the volume attached (or being attached or
        detached).  When compute cannot say, the answer is yes: refusing a
        user's attachment delete is safe, allowing it may not be."""
        try:
            reply = self._get(f"/servers/{server_id}/os-volume_attachments/{volume_id}")
        except TransportFailed:
            LOG.exception("compute could not be asked whether %s uses %s", server_id,
                          volume_id)
            return True
        if reply.status == 404:
            return False
        if reply.status != 200:
            LOG.error("compute answered %d on whether %s uses %s", reply.status, server_id,
                      volume_id)
            if reply.status >= 500:
                return True
            raise BackendError(f"compute refused to say whether server {server_id} uses "
                               f"volume {volume_id} ({reply.status})")
        return True
