from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import Tether
from tether.connectors.fake import FakeConnector
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tether]:
    """One embedded Tether (fake drivers) per test module; tests keep to their
    own volumes and servers."""
    t = Tether(str(tmp_path_factory.mktemp("tether")), FakeTarget(), FakeDriver(),
               FakeConnector())
    try:
        yield t
    finally:
        t.stop()
