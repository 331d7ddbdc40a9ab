"""Libvirt's event loop, and a place where a detach waits for the guest to
let go of a device.

libvirt delivers DEVICE_REMOVED and DEVICE_REMOVAL_FAILED through its default
event loop, which must be registered before the first connection is opened
and then run by a thread.  A detach registers its waiter *before* asking for
the unplug, so an event that comes back at once is not missed.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import defaultdict
from typing import Any

import libvirt

LOG = logging.getLogger(__name__)

_loop_lock = threading.Lock()
_loop_threads: list[threading.Thread] = []  # at most one


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation once per process and
    run it in a daemon thread."""
    with _loop_lock:
        if _loop_threads:
            return
        libvirt.virEventRegisterDefaultImpl()
        # errors reach us as exceptions; don't let libvirt print them as well
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

        def run() -> None:
            while True:
                try:
                    libvirt.virEventRunDefaultImpl()
                except Exception:
                    LOG.exception("libvirt event loop iteration failed")

        thread = threading.Thread(target=run, name="libvirt-events", daemon=True)
        thread.start()
        _loop_threads.append(thread)


class Outcome(enum.Enum):
    REMOVED = "removed"
    FAILED = "failed"


class _Waiter:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.outcome: Outcome | None = None


class DeviceEvents:
    """Waiters keyed by (domain uuid, device alias)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: defaultdict[tuple[str, str], list[_Waiter]] = defaultdict(list)

    def register(self, conn: Any) -> None:
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED,
                                    self._on_removed, None)
        conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVAL_FAILED,
                                    self._on_failed, None)

    def _on_removed(self, conn: Any, dom: Any, alias: str, opaque: Any) -> None:
        self.fire(dom.UUIDString(), alias, Outcome.REMOVED)

    def _on_failed(self, conn: Any, dom: Any, alias: str, opaque: Any) -> None:
        self.fire(dom.UUIDString(), alias, Outcome.FAILED)

    def fire(self, domain_uuid: str, alias: str, outcome: Outcome) -> None:
        LOG.debug("libvirt event: device %s of %s %s", alias, domain_uuid, outcome.value)
        with self._lock:
            waiters = self._waiters.pop((domain_uuid, alias), [])
        for w in waiters:
            w.outcome = outcome
            w.event.set()

    def expect(self, domain_uuid: str, alias: str) -> _Waiter:
        waiter = _Waiter()
        with self._lock:
            self._waiters[(domain_uuid, alias)].append(waiter)
        return waiter

    def forget(self, domain_uuid: str, alias: str, waiter: _Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get((domain_uuid, alias), [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._waiters.pop((domain_uuid, alias), None)

    def wait(self, waiter: _Waiter, timeout: float) -> Outcome | None:
        """The event's outcome, or None when none came within ``timeout``."""
        if waiter.event.wait(timeout):
            return waiter.outcome
        return None
