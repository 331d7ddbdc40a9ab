from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.integration.daemons import Tgtd


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
def libvirtd() -> None:
    """virtlogd + libvirtd answering on qemu:///system (started if needed)."""
    from tether import daemons

    if shutil.which("libvirtd") is None:
        pytest.fail("libvirtd is needed: run tools/bootstrap.sh")
    daemons.ensure_libvirtd()
