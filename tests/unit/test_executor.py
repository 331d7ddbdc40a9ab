from __future__ import annotations

import logging
import sys

import pytest

from tether.executor import CommandError, ProcessRunner, redact


def test_redact_masks_every_occurrence() -> None:
    assert redact(["--password", "pw", "x=pw"], ["pw"]) == ["--password", "***", "x=***"]


def test_runner_masks_secrets_in_errors_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(CommandError) as err:
        ProcessRunner().run([sys.executable, "-c", "import sys; print(sys.argv[1]); "
                             "sys.exit(3)", "hunter2-secret"], secrets=["hunter2-secret"])
    assert err.value.returncode == 3
    assert "hunter2-secret" not in str(err.value)
    assert "hunter2-secret" not in caplog.text
    assert "***" in str(err.value)


def test_runner_returns_output() -> None:
    res = ProcessRunner().run([sys.executable, "-c", "print('ok')"])
    assert res.returncode == 0 and res.stdout.strip() == "ok"
