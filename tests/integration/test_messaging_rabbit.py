"""The same RPC and notification assertions over ``tether-inproc://`` and over
RabbitMQ (the distributed mode's transport): only the URL differs.  Topics
are unique to each run (uuid), so runs and leftovers never meet."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.unit.messaging import test_inproc as cases

pytestmark = pytest.mark.integration

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
