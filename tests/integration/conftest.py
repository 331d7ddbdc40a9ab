from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.integration.daemons import Tgtd, ensure_rabbitmq
from tether.executor import CommandError, ProcessRunner
from tether.image.tiny import TinyBuilder, TinyBuildError, TinyImage


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tgtd() -> Iterator[Tgtd]:
    if shutil.which("tgtd") is None or shutil.which("iscsi-inq") is None:
        pytest.fail("tgtd and iscsi-inq are needed: run tools/bootstrap.sh")
    daemon = Tgtd().start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def rabbit() -> str:
    """RabbitMQ on 127.0.0.1:5672 (started if it is not up): its URL."""
    try:
        return ensure_rabbitmq()
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def libvirtd() -> None:
    """virtlogd + libvirtd answering on qemu:///system (started if needed)."""
    from tether import daemons

    if shutil.which("libvirtd") is None:
        pytest.fail("libvirtd is needed: run tools/bootstrap.sh")
    daemons.ensure_libvirtd()


@dataclass(frozen=True)
class TinyImageFiles:
    """The tiny Linux image built once per session, in a folder QEMU's own
    user can read: ``images`` and ``instances`` for the Tethers of the tests."""

    image: TinyImage
    shared: str
    build_seconds: float

    def overrides(self) -> dict[str, dict[str, object]]:
        return {"compute": {"images_dir": f"{self.shared}/images",
                            "instances_dir": f"{self.shared}/instances"},
                "image": {"cache_dir": f"{self.shared}/cache"}}


# The tiny image's packages and files, kept across sessions: TinyBuilder keys
# them by the two packages' versions (from apt's local lists), so only the
# first session, and the first after `apt-get update` brings a new kernel,
# downloads from the Debian mirror.
TINY_CACHE = os.environ.get("TETHER_TINY_CACHE", "/var/cache/tether-tests/tiny")


@pytest.fixture(scope="session")
def tiny_image(libvirtd: None) -> Iterator[TinyImageFiles]:
    for tool in ("apt-get", "apt-cache", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to build the tiny image (a Debian host)")
    shared = f"/var/tmp/tether-it-{uuid.uuid4().hex[:8]}"
    os.makedirs(f"{shared}/images", mode=0o755)
    os.makedirs(f"{shared}/instances", mode=0o711)
    started = time.perf_counter()
    try:
        built = TinyBuilder(TINY_CACHE, ProcessRunner()).build()
    except (TinyBuildError, CommandError, OSError) as exc:  # no mirror, nothing cached
        shutil.rmtree(shared, ignore_errors=True)
        pytest.fail(f"the tiny image cannot be built (its first build downloads two Debian "
                    f"packages from the mirror into {TINY_CACHE}): {exc}", pytrace=False)
    try:
        yield TinyImageFiles(built, shared, time.perf_counter() - started)
    finally:
        shutil.rmtree(shared, ignore_errors=True)
