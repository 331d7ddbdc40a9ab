"""Host-wide named locks.

When a storage backend shares one iSCSI target between volumes, a host's
session to it serves several volumes: a detach must not log that session out
while an attach on the same host is logging in through it.  Both run under
the lock named after the backend (its ``service_uuid``): a thread lock for
this process plus ``flock`` on a file, so that other processes on the host
(a second compute service, os-brick) are kept out too.

A thread may take a lock it holds again (an operation holds its volume's lock
around the whole flow, and the one disconnect routine takes it too, for the
callers that do not).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


class HostLocks:
    def __init__(self, lock_dir: str) -> None:
        self.lock_dir = lock_dir
        self._threads: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()
        self._mine = threading.local()  # .held: the names this thread holds

    def holds(self, name: str) -> bool:
        """Whether this thread holds ``name``."""
        return name in self._mine.__dict__.get("held", ())

    @contextlib.contextmanager
    def hold(self, name: str) -> Iterator[None]:
        held: set[str] = self._mine.__dict__.setdefault("held", set())
        if name in held:
            yield
            return
        with self._guard:
            thread_lock = self._threads[name]
        with thread_lock:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)
            path = os.path.join(self.lock_dir, f"tether-{_SAFE.sub('_', name)}.lock")
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                held.add(name)
                yield
            finally:
                held.discard(name)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


@contextlib.contextmanager
def maybe(locks: HostLocks, name: str | None) -> Iterator[None]:
    """``locks.hold(name)`` when there is a name, nothing otherwise."""
    if name is None:
        yield
        return
    with locks.hold(name):
        yield
