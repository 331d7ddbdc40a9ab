"""What deleting a server does to its volumes, wherever it runs: on the
server's host after the guest is destroyed (``terminate_instance``), or in
the compute API for a server that has no host (shelved-offloaded: no guest,
no host connection; Nova's "local delete").

Per volume, each step idempotent so that a delete a crash interrupted is
simply run again: the host connection (forced: the guest is gone for good),
storage's attachment, the volume itself when ``delete_on_termination``, and
last the mapping (while it is live, a resumed delete finds the volume again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tether.compute.operations import ActionRef, Operations
from tether.compute.repository import ComputeRepository
from tether.compute.volume_client import VolumeClient
from tether.db.records import BdmRecord
from tether.exceptions import VolumeNotFound
from tether.states import volume as vol_states

LOG = logging.getLogger(__name__)


def release_volumes(repo: ComputeRepository, volumes: VolumeClient, ops: Operations,
                    action: ActionRef,
                    disconnect: Callable[[BdmRecord], object] | None = None) -> int:
    """Release every volume of the server (one failing does not keep the
    others).  Returns how many could not be released (their mappings stay,
    live, for a later run or an operator; the action records each error)."""
    with repo.begin() as c:
        bdms = [b for b in repo.live_bdms(c, action.instance_uuid) if b.volume_id]
    failed = 0
    for bdm in bdms:
        try:
            with ops.step(action, f"detach_volume:{bdm.volume_id}"):
                if disconnect is not None:
                    disconnect(bdm)
                if bdm.attachment_id:
                    volumes.attachment_delete(bdm.attachment_id)
                if bdm.delete_on_termination:
                    _delete_volume(volumes, bdm)
                with repo.begin() as c:
                    repo.release_bdm(c, bdm)
        except Exception:
            failed += 1
            LOG.exception("deleting instance %s: volume %s could not be released",
                          bdm.instance_uuid, bdm.volume_id)
    return failed


def _delete_volume(volumes: VolumeClient, bdm: BdmRecord) -> None:
    assert bdm.volume_id is not None
    try:
        status = volumes.get_volume(bdm.volume_id).status
    except VolumeNotFound:
        return
    if status not in (vol_states.DELETING, vol_states.DELETED):  # a resumed delete asked
        volumes.delete_volume(bdm.volume_id)
