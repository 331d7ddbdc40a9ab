"""What the audit unit tests share: a stack whose host reaches volumes as
iscsi-direct does (its secrets in the fake libvirt), and ways to read a report.
The real libvirt and tgtd are in tests/integration/test_audit.py."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import (
    Tether,
)
from tether.audit import command
from tether.connectors.iscsi_direct import IscsiDirectConnector
from tether.db import models
from tether.service import Drivers
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget

INITIATOR = "iqn.2010-10.org.tether:audit-host"
LONG_AGO = models.utcnow().replace(year=2000)


@pytest.fixture
def t(tmp_path: object) -> Iterator[Tether]:
    """A stack whose host reaches volumes as iscsi-direct does (CHAP secrets
    in the fake libvirt), so the secret checks apply."""
    virt = FakeDriver()
    stack = Tether(str(tmp_path), FakeTarget(), virt,
                   IscsiDirectConnector(virt, INITIATOR, "testhost"))
    try:
        yield stack
    finally:
        stack.stop()


def run(t: Tether, *, repair: bool = False, fmt: str = "text",
        **drivers: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    given = {"target": t.target, "virt": t.virt, "connector": t.connector, **drivers}
    rc = command(t.conf, repair=repair, fmt=fmt, drivers=Drivers(**given), out=out, err=err)
    return rc, out.getvalue(), err.getvalue()


def report(t: Tether, repair: bool = False) -> dict[str, Any]:
    rc, out, _ = run(t, repair=repair, fmt="json")
    doc: dict[str, Any] = json.loads(out)
    assert doc["exit_code"] == rc
    return doc


def drifts(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The drifts of a JSON report by kind."""
    out: dict[str, list[dict[str, Any]]] = {}
    for f in doc["findings"]:
        if f["state"] == "drift":
            out.setdefault(f["kind"], []).append(f)
    return out


def only(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    found = drifts(doc)
    assert list(found) == [kind], found
    (finding,) = found[kind]
    return finding


def repaired(t: Tether, kind: str) -> dict[str, Any]:
    """Repair a stack with exactly one drift of ``kind``: repaired, then clean."""
    doc = report(t, repair=True)
    finding = only(doc, kind)
    assert finding["outcome"]["result"] == "repaired", finding
    assert doc["after_repair"] == [] and doc["exit_code"] == 0
    assert report(t)["exit_code"] == 0
    return finding


def left(t: Tether, kind: str) -> dict[str, Any]:
    """Repair a stack with exactly one drift of ``kind``: left, with advice."""
    doc = report(t, repair=True)
    finding = only(doc, kind)
    assert not finding["repairable"] and finding["advice"]
    assert finding["outcome"] == {"result": "left", "text": finding["advice"]}
    assert [f["kind"] for f in doc["after_repair"]] == [kind] and doc["exit_code"] == 1
    return finding
