"""The one place Tether runs host commands (tgtadm, iscsiadm, qemu-img ...).

Everything that needs root goes through a :class:`Runner`, injected into the
drivers that need it, so unit tests can hand in a recording fake and the real
runner can later be swapped for a privilege-separated one.  Secrets passed on
a command line are given as ``secrets=`` and are replaced by ``***`` in every
log line and error message.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

LOG = logging.getLogger(__name__)

REDACTED = "***"


def redact(argv: Sequence[str], secrets: Sequence[str]) -> list[str]:
    """Return ``argv`` with every occurrence of a secret masked."""
    return [_mask(arg, secrets) for arg in argv]


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass
class CommandError(Exception):
    """A command exited non-zero.  ``argv`` is already redacted."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    secrets: Sequence[str] = field(default=(), repr=False)

    def __str__(self) -> str:
        err = self.stderr.strip() or self.stdout.strip()
        return f"{' '.join(self.argv)} exited {self.returncode}: {err}"


class Runner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        secrets: Sequence[str] = (),
        timeout: float | None = 60.0,
        cwd: str | None = None,
    ) -> CommandResult: ...


class ProcessRunner:
    """Runs commands with :mod:`subprocess`; never through a shell."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        secrets: Sequence[str] = (),
        timeout: float | None = 60.0,
        cwd: str | None = None,
    ) -> CommandResult:
        shown = tuple(redact(argv, secrets))
        LOG.debug("running %s", " ".join(shown))
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd
        )
        stdout = _mask(proc.stdout, secrets)
        stderr = _mask(proc.stderr, secrets)
        result = CommandResult(shown, proc.returncode, stdout, stderr)
        if check and proc.returncode != 0:
            raise CommandError(shown, proc.returncode, stdout, stderr)
        return result


def _mask(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text
