"""The in-process oslo.messaging driver: same behaviour as RabbitMQ (see
tests/integration/test_messaging_rabbit.py), without the fake driver's
50 ms polling."""

from __future__ import annotations

import statistics
import time
import uuid
import warnings
from typing import Any

import pytest

from tests import messaging_cases as cases
from tether.rpc import Rpc


@pytest.fixture
def rpc(tmp_path: Any) -> Any:
    with cases.bus(f"tether-inproc://{uuid.uuid4().hex}", str(tmp_path)) as r:
        yield r


def test_call_and_cast(rpc: Rpc) -> None:
    cases.check_call_and_cast(rpc)


def test_remote_domain_error_comes_back_as_itself(rpc: Rpc) -> None:
    cases.check_remote_domain_error(rpc)


def test_server_targeting(rpc: Rpc) -> None:
    cases.check_server_targeting(rpc)


def test_call_timeout(rpc: Rpc) -> None:
    cases.check_call_timeout(rpc)


def test_notifications(tmp_path: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        cases.check_notifications(f"tether-inproc://{uuid.uuid4().hex}", str(tmp_path))


def test_messages_sent_before_the_server_starts_wait_for_it(rpc: Rpc) -> None:
    t = cases.topic()
    ep = cases.Endpoint("h1")
    rpc.client(t, "h1").cast(cases.CTX, "note", value="early")
    rpc.serve(t, "h1", [ep])
    assert ep.event.wait(5)


def test_two_transports_on_one_url_talk(tmp_path: Any) -> None:
    url = f"tether-inproc://{uuid.uuid4().hex}"
    with cases.bus(url, str(tmp_path)) as server_side, cases.bus(url, str(tmp_path)) as client:
        t = cases.topic()
        server_side.serve(t, "h1", [cases.Endpoint("h1")])
        assert client.client(t, "h1").call(cases.CTX, "echo", value=3)["value"] == 3


def test_call_latency_is_well_under_a_millisecond(rpc: Rpc) -> None:
    t = cases.topic()
    rpc.serve(t, "h1", [cases.Endpoint("h1")])
    client = rpc.client(t, "h1")
    client.call(cases.CTX, "echo", value=0)
    samples = []
    for i in range(200):
        t0 = time.perf_counter()
        client.call(cases.CTX, "echo", value=i)
        samples.append(time.perf_counter() - t0)
    p50 = statistics.median(samples) * 1000
    print(f"in-process RPC call p50 {p50:.3f} ms")
    assert p50 < 2.0
