"""What quota enforcement must do on every database Tether runs on: run on
SQLite by tests/unit/db/test_quota_race.py and on PostgreSQL and MariaDB by
tests/integration/test_quota_databases.py.

Six creates of one project start together (a barrier) with room for one:
exactly one wins, the five others are refused, and the rows are what the
usage says.  Without the lock each would count the others' rows as absent
(or, on SQLite, fail on a stale snapshot)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from tether.compute.repository import ComputeRepository
from tether.db.api import Database, Tx
from tether.quota import BLOCK_STORAGE, COMPUTE, Locks, OverQuota, Quotas
from tether.states import server as srv_states
from tether.volume.repository import VolumeRepository

RACERS = 6


def _race(quotas: Quotas, project: str, requested: Mapping[str, int],
          insert: Callable[[Tx], object]) -> list[str]:
    barrier = threading.Barrier(RACERS)
    results: list[str] = []
    mutex = threading.Lock()

    def create() -> None:
        barrier.wait(timeout=30)
        try:
            with quotas.claim(project, requested) as c:
                insert(c)
            outcome = "created"
        except OverQuota:
            outcome = "refused"
        except Exception as exc:  # what went wrong is the finding
            outcome = f"error: {exc!r}"
        with mutex:
            results.append(outcome)

    threads = [threading.Thread(target=create) for _ in range(RACERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return sorted(results)


def six_volume_creates_room_for_one(db: Database) -> None:
    project = f"race-{uuid.uuid4().hex[:8]}"
    quotas = Quotas(db, Locks(db), BLOCK_STORAGE, {"volumes": 2, "gigabytes": -1},
                    VolumeRepository.usage)
    with quotas.claim(project, {"volumes": 1}) as c:  # one there already
        VolumeRepository.new_volume(c, _volume(project))

    def insert(c: Tx) -> Any:
        return VolumeRepository.new_volume(c, _volume(project))

    assert _race(quotas, project, {"volumes": 1}, insert) == ["created"] + ["refused"] * 5
    assert quotas.show(project).usage["volumes"] == 2
    with db.begin() as c:
        assert len(VolumeRepository.volumes(c, project, {})) == 2


def six_server_creates_room_for_one(db: Database) -> None:
    project = f"race-{uuid.uuid4().hex[:8]}"  # a new project: its lock row races too
    quotas = Quotas(db, Locks(db), COMPUTE, {"instances": -1, "cores": 2, "ram": -1},
                    ComputeRepository.usage)

    def insert(c: Tx) -> Any:
        return ComputeRepository.new_server(c, {
            "uuid": str(uuid.uuid4()), "name": "racer", "project_id": project,
            "user_id": "u", "host": "h", "flavor_id": "4", "vcpus": 2, "memory_mb": 512,
            "image_ref": None, "power_state": srv_states.POWER_NOSTATE, "locked": False,
            "meta": {}})

    assert _race(quotas, project, {"instances": 1, "cores": 2, "ram": 512}, insert) == [
        "created"] + ["refused"] * 5
    with db.begin() as c:
        assert ComputeRepository.usage(c, project) == {"instances": 1, "cores": 2,
                                                        "ram": 512}


def _volume(project: str) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "project_id": project, "user_id": "u", "size": 1,
            "multiattach": False, "meta": {}, "host": "h", "service_uuid": None,
            "shared_targets": False}


CASES = [six_volume_creates_room_for_one, six_server_creates_room_for_one]
