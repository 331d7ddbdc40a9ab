"""tether/quota.py: the comparison, limits over defaults, the lock row."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete

from tether.db import migrate, models
from tether.db.api import Database
from tether.quota import BLOCK_STORAGE, Excess, Locks, OverQuota, Quotas, over
from tether.volume.repository import VolumeRepository


@pytest.fixture
def quotas(tmp_path: Path) -> Quotas:
    db = Database(f"sqlite:///{tmp_path}/t.db")
    migrate.upgrade(db)
    return Quotas(db, Locks(db), BLOCK_STORAGE, {"volumes": 2, "gigabytes": 10},
                  VolumeRepository.usage)


@pytest.mark.parametrize(("limits", "usage", "requested", "expected"), [
    ({"volumes": 2}, {"volumes": 1}, {"volumes": 1}, None),
    ({"volumes": 2}, {"volumes": 2}, {"volumes": 1}, Excess("volumes", 1, 2, 2)),
    ({"volumes": -1}, {"volumes": 10**6}, {"volumes": 1}, None),
    ({"volumes": 0}, {}, {"volumes": 1}, Excess("volumes", 1, 0, 0)),
    ({"volumes": 0}, {}, {"volumes": 0}, None),  # asking for nothing always fits
    ({"volumes": 5, "gigabytes": 3}, {"gigabytes": 2}, {"volumes": 1, "gigabytes": 2},
     Excess("gigabytes", 2, 2, 3)),
    ({}, {}, {"unknown": 5}, None),  # no limit: unlimited
])
def test_over(limits: dict[str, int], usage: dict[str, int], requested: dict[str, int],
              expected: Excess | None) -> None:
    assert over(limits, usage, requested) == expected


def test_limits_are_defaults_overlaid_and_delete_resets(quotas: Quotas) -> None:
    assert quotas.show("p").limits == {"volumes": 2, "gigabytes": 10}
    assert quotas.update("p", {"volumes": 5}).limits == {"volumes": 5, "gigabytes": 10}
    assert quotas.update("p", {"volumes": -1}).limits["volumes"] == -1  # updated in place
    assert quotas.show("other").limits["volumes"] == 2
    quotas.delete("p")
    assert quotas.show("p").limits == {"volumes": 2, "gigabytes": 10}
    with pytest.raises(KeyError):
        quotas.update("p", {"instances": 1})


def test_a_refused_claim_inserts_nothing(quotas: Quotas) -> None:
    quotas.update("p", {"volumes": 0})
    with pytest.raises(OverQuota) as exc, quotas.claim("p", {"volumes": 1}):
        pytest.fail("the body of a refused claim runs")
    assert exc.value.excess == Excess("volumes", 1, 0, 0)


def test_a_lost_lock_row_is_made_again(quotas: Quotas) -> None:
    with quotas.claim("p", {"volumes": 1}):
        pass
    with quotas.db.begin() as c:  # a database restored without it, say
        c.execute(delete(models.QuotaLock.__table__))
    with quotas.claim("p", {"volumes": 1}) as c:
        assert c is not None
    with quotas.db.begin() as c:
        assert c.execute(models.QuotaLock.__table__.select()).all() != []
