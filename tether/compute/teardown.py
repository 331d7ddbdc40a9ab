"""What deleting a server does to its volumes, wherever it runs: on the
server's host after the guest is destroyed (``terminate_instance``), or in
the compute API for a server that has no host (shelved-offloaded: no guest,
no host connection; Nova's "local delete")."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tether.compute.volume_client import VolumeClient
from tether.db import models
from tether.db.api import Database
from tether.db.records import BDMS
from tether.operations import ActionRef, Operations

LOG = logging.getLogger(__name__)


class VolumeMapping(Protocol):
    """A block device mapping as either side reads it (ORM row or record)."""

    @property
    def id(self) -> int: ...
    @property
    def instance_uuid(self) -> str: ...
    @property
    def volume_id(self) -> str | None: ...
    @property
    def attachment_id(self) -> str | None: ...
    @property
    def delete_on_termination(self) -> bool: ...
    @property
    def connection_info(self) -> dict[str, Any] | None: ...


def release_volumes(db: Database, volumes: VolumeClient, ops: Operations, action: ActionRef,
                    bdms: Iterable[VolumeMapping],
                    disconnect: Callable[[VolumeMapping], None] | None = None) -> int:
    """Each volume on its own (one failing does not keep the others): host
    disconnect (``disconnect``, when there is a host), attachment deleted,
    mapping soft-deleted, volume deleted when ``delete_on_termination``.
    Returns how many could not be cleaned (their attachments stay for an
    operator; the action records each error)."""
    failed = 0
    for bdm in bdms:
        if bdm.volume_id is None:
            continue
        try:
            with ops.step(action, f"detach_volume:{bdm.volume_id}"):
                if disconnect is not None:
                    disconnect(bdm)
                if bdm.attachment_id:
                    volumes.attachment_delete(bdm.attachment_id)
                with db.begin() as c:
                    BDMS.update(c, bdm.id, {"deleted": True, "deleted_at": models.utcnow()})
                if bdm.delete_on_termination:
                    volumes.delete_volume(bdm.volume_id)
        except Exception:
            failed += 1
            LOG.exception("deleting instance %s: volume %s could not be cleaned up; its "
                          "attachment stays for an operator", bdm.instance_uuid, bdm.volume_id)
    return failed
