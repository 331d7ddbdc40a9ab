"""Render an instance action's steps as a text waterfall: where the time of
an attach or detach went, step by step."""

from __future__ import annotations

import datetime as dt
from typing import Any

WIDTH = 40


def _t(value: str | None) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(value)


def render(action: dict[str, Any], width: int = WIDTH) -> list[str]:
    events = action.get("events", [])
    starts = [_t(e["start_time"]) for e in events]
    ends = [_t(e["finish_time"]) for e in events]
    known = [t for t in starts + ends if t is not None]
    if not known:
        return [f"{action['action']} {action['request_id']}: no steps recorded"]
    t0, t1 = min(known), max(known)
    span = max((t1 - t0).total_seconds(), 1e-6)
    name_w = max(len(e["event"]) for e in events)
    outcome = (action.get("message") or "Success") if action.get("finish_time") else "running"
    lines = [f"{action['action']} {action['request_id']}  total {span * 1000:8.1f} ms  "
             f"{outcome}"]
    for event, start, end in zip(events, starts, ends, strict=True):
        assert start is not None
        a = int((start - t0).total_seconds() / span * width)
        if end is None:
            bar = " " * a + ">" * max(1, width - a)
            took = "running"
        else:
            b = max(a + 1, int((end - t0).total_seconds() / span * width))
            bar = " " * a + "#" * (b - a) + " " * (width - b)
            took = f"{(end - start).total_seconds() * 1000:8.1f} ms"
        result = event.get("result") or ""
        lines.append(f"  {event['event']:{name_w}}  |{bar:{width}}|  {took:>11}  {result}")
        if event.get("details") and result != "Success":
            lines.append(f"  {'':{name_w}}   {event['details']}")
    return lines
