"""Fault points: named places where a test can have the process killed.

The crash tests (``tests/integration/test_crash_recovery.py``) start a
service with ``TETHER_KILL_AT`` naming one point (shell-style patterns,
comma-separated): when the process reaches a point that matches, it sends
itself SIGKILL there -- no cleanup, no finally blocks, exactly what a power
cut or the OOM killer does.  The test then starts the service again on the
same state and checks that recovery left nothing behind.

Every step of an operation is two points (``<step>:start`` once its start is
recorded, ``<step>:end`` once its work is done and before its finish is
recorded); other points are named where they are placed.  Unset (as in
production) a point costs one global lookup.  Unit tests put an exception
in ``_die``'s place to stop a flow where a crash would.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import signal

LOG = logging.getLogger(__name__)
ENV = "TETHER_KILL_AT"

_patterns: tuple[str, ...] = tuple(p.strip() for p in os.environ.get(ENV, "").split(",")
                                   if p.strip())


def point(name: str) -> None:
    if _patterns and any(fnmatch.fnmatchcase(name, p) for p in _patterns):
        _die(name)


def _die(name: str) -> None:
    LOG.critical("fault point %s reached: killing this process (%s)", name, ENV)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)

