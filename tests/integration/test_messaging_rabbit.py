"""The same RPC and notification assertions over ``tether-inproc://`` and over
RabbitMQ (the distributed mode's transport): only the URL differs.  Topics
are unique to each run (uuid), so runs and leftovers never meet."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator

import kombu
import pytest

from tests.unit.messaging import test_inproc as cases

pytestmark = pytest.mark.integration

RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"


def _rabbit_answers() -> str | None:
    """None once RabbitMQ accepts an AMQP login, else why not."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=2) as conn:
            conn.connect()
        return None
    except Exception as e:  # refused, reset while booting, login refused: all "not yet"
        return repr(e)


@pytest.fixture(scope="session")
def rabbit() -> str:
    """RabbitMQ on 127.0.0.1:5672, started (and left running) if it is not up."""
    if _rabbit_answers() is None:
        return RABBIT
    if shutil.which("rabbitmq-server") is None:
        pytest.fail("rabbitmq-server is not installed: tools/bootstrap.sh must install the "
                    "Debian package rabbitmq-server")
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    deadline = time.monotonic() + 90
    while (why := _rabbit_answers()) is not None:
        if time.monotonic() > deadline:
            pytest.fail(f"RabbitMQ did not accept guest logins on 127.0.0.1:5672 within 90 s "
                        f"of `rabbitmq-server -detached` ({why}): see /var/log/rabbitmq/")
        time.sleep(0.25)
    return RABBIT


@pytest.fixture(params=["inproc", "rabbit"])
def bus(request: pytest.FixtureRequest) -> Iterator[cases.Bus]:
    url = request.getfixturevalue("rabbit") if request.param == "rabbit" else cases.inproc_url()
    b = cases.Bus(url)
    try:
        yield b
    finally:
        b.close()


@pytest.mark.parametrize("check", cases.SHARED_CHECKS, ids=lambda f: f.__name__[6:])
def test_transport_behaviour(bus: cases.Bus, check: Callable[[cases.Bus], object]) -> None:
    check(bus)


def test_latency(bus: cases.Bus) -> None:
    p50, p95 = cases.measure_calls(bus)
    cast_p50 = cases.measure_casts(bus)
    print(f"\n{bus.url.split(':')[0]}: call p50 {p50:.3f} ms, p95 {p95:.3f} ms; "
          f"cast to handler p50 {cast_p50:.3f} ms")
    if bus.url.startswith("tether-inproc"):
        assert p50 < 2.0
    else:  # a loopback broker: a few milliseconds; seconds would mean a polling bug
        assert p50 < 50.0
