"""The request context crosses RPC as a dict."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tether import config
from tether.context import RequestContext
from tether.notifications import Notifier


def test_context_round_trips_every_field() -> None:
    ctx = RequestContext("u", "p", ("member", "reader"), is_admin=False, is_service=True,
                         auth_token="u:p")
    data = ctx.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(RequestContext)}
    assert data["roles"] == ["member", "reader"]
    assert RequestContext.from_dict(data) == ctx


def test_notifications_are_off_without_a_driver(tmp_path: Path) -> None:
    conf = config.load(state_dir=str(tmp_path))
    notifier = Notifier(conf, "compute.h")
    try:
        assert not notifier.enabled
    finally:
        notifier.close()
    conf.set_override("driver", ["messagingv2"], group="oslo_messaging_notifications")
    notifier = Notifier(conf, "compute.h")
    try:
        assert notifier.enabled
    finally:
        notifier.close()
