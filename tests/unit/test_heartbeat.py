"""A service's heartbeat is what makes it 'up' for the APIs."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update

from tether.db import migrate, models, services
from tether.db.api import Database
from tether.db.records import SERVICES
from tether.service import Heartbeat, live_services


def test_beat_keeps_a_service_live_and_counts() -> None:
    db = Database("sqlite://")
    migrate.upgrade(db)
    hb = Heartbeat(db, "host-a", "tether-compute", "tether-compute", interval=60)
    assert [s.host for s in live_services(db, "tether-compute", 60)] == ["host-a"]
    with db.begin() as c:  # silent for two minutes
        c.execute(update(SERVICES.table).values(
            last_seen_at=models.utcnow() - dt.timedelta(seconds=120)))
    assert live_services(db, "tether-compute", 60) == []
    hb.beat()
    hb.beat()
    (svc,) = live_services(db, "tether-compute", 60)
    assert svc.report_count == 2 and svc.uuid == hb.uuid
    assert live_services(db, "tether-volume", 60) == []
    # registering again (a restart) keeps the same service, in a new incarnation
    again = Heartbeat(db, "host-a", "tether-compute", "tether-compute")
    assert again.uuid == hb.uuid and again.incarnation != hb.incarnation
    assert services.owners(db, 60).alive(again.incarnation)
    assert not services.owners(db, 60).alive(hb.incarnation)  # the earlier life is dead
