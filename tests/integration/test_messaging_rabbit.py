"""The same RPC and notification assertions over RabbitMQ (the distributed
mode's transport), on topics unique to this run."""

from __future__ import annotations

import socket
import subprocess
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from tests import messaging_cases as cases
from tether.rpc import Rpc

URL = "rabbit://guest:guest@127.0.0.1:5672/"


def _rabbit_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def rabbit() -> None:
    if not _rabbit_up():
        subprocess.run(["rabbitmq-server", "-detached"], check=False)
        deadline = time.monotonic() + 60
        while not _rabbit_up():
            if time.monotonic() > deadline:
                pytest.fail("RabbitMQ did not come up on 127.0.0.1:5672")
            time.sleep(0.2)


@pytest.fixture
def rpc(rabbit: None, tmp_path: Any) -> Iterator[Rpc]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with cases.bus(URL, str(tmp_path)) as r:
            yield r


def test_call_and_cast(rpc: Rpc) -> None:
    cases.check_call_and_cast(rpc)


def test_remote_domain_error_comes_back_as_itself(rpc: Rpc) -> None:
    cases.check_remote_domain_error(rpc)


def test_server_targeting(rpc: Rpc) -> None:
    cases.check_server_targeting(rpc)


def test_notifications(rabbit: None, tmp_path: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cases.check_notifications(URL, str(tmp_path))
