"""``tether serve`` as its own process on free ports with the fake virt and
target drivers: for tests of the REST layer over real HTTP (the fuzz, the
input limits) where what is behind the APIs does not matter and accepted
creates must stay cheap."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.harness import wait_for
from tests.integration.daemons import free_port
from tests.integration.serve import TETHER, UNLIMITED_QUOTAS_INI


@dataclass
class FakeServe:
    state_dir: str
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None
    ids: dict[str, list[str]] = field(default_factory=dict)
    # the database as the last refused request left it; None after an
    # accepted one (wait until it is still again)
    known: dict[str, list[tuple[Any, ...]]] | None = None

    def url(self, api: str) -> str:
        return f"http://127.0.0.1:{self.ports[api]}"


def write_config(state_dir: str) -> FakeServe:
    tag = uuid.uuid4().hex[:8]
    serve = FakeServe(state_dir, {"compute": free_port(), "volume": free_port(),
                                  "image": free_port()})
    with open(os.path.join(state_dir, "tether.conf"), "w") as f:
        f.write(f"""[DEFAULT]
host = fuzz-{tag}
transport_url = tether-inproc://fuzz-{tag}
[api]
auth_strategy = noauth
compute_port = {serve.ports["compute"]}
volume_port = {serve.ports["volume"]}
image_port = {serve.ports["image"]}
default_project = p-fuzz
[quota]
{UNLIMITED_QUOTAS_INI}
[volume]
target_driver = fake
reconcile_interval = 0
[compute]
virt_driver = fake
sweep_interval = 0
initiator_iqn = iqn.2010-10.org.tether:fuzz-{tag}
domain_prefix = tether-fuzz-{tag}-
""")
    return serve


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def fake_serve(state_dir: str) -> Iterator[FakeServe]:
    serve = write_config(state_dir)
    with open(os.path.join(state_dir, "serve.out"), "ab") as log:
        serve.proc = subprocess.Popen(
            [TETHER, "--config-file", os.path.join(state_dir, "tether.conf"),
             "--state-dir", state_dir, "serve"], stdout=log, stderr=subprocess.STDOUT)
    try:
        proc = serve.proc
        wait_for(lambda: all(answers(serve.url(a)) for a in ("compute", "volume"))
                 or proc.poll() is not None, 60, "tether serve up")
        if proc.poll() is not None:
            with open(os.path.join(state_dir, "serve.out")) as out:
                raise AssertionError(f"tether serve exited:\n{out.read()}")
        yield serve
    finally:
        if serve.proc is not None:
            serve.proc.terminate()
            try:
                serve.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                serve.proc.kill()
                serve.proc.wait(timeout=10)
