"""Registering and importing images; what a compute host boots."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from tether.db import migrate
from tether.db.api import Database
from tether.exceptions import InvalidInput
from tether.executor import CommandResult
from tether.image.registry import ImageNotFound, ImageRegistry


class QemuImg:
    def __init__(self, fmt: str) -> None:
        self.fmt = fmt

    def run(self, argv: Sequence[str], **kw: object) -> CommandResult:
        assert list(argv[:3]) == ["qemu-img", "info", "--output=json"]
        return CommandResult(tuple(argv), 0, json.dumps({"format": self.fmt}), "")


@pytest.fixture
def registry(tmp_path: Path) -> ImageRegistry:
    db = Database("sqlite://")
    migrate.upgrade(db)
    return ImageRegistry(db, str(tmp_path / "images"))


def test_import_copies_the_file_and_registers_it(registry: ImageRegistry,
                                                 tmp_path: Path) -> None:
    source = tmp_path / "disk.img"
    source.write_bytes(b"\xeb" * 4096)
    image = registry.import_file(str(source), "disk", QemuImg("qcow2"),
                                 {"hw_disk_bus": "virtio"})
    assert image.disk_format == "qcow2" and image.container_format == "bare"
    assert image.size == 4096 and image.file is not None and image.file.endswith(".qcow2")
    stored = Path(registry.path(image.file))
    assert stored.read_bytes() == source.read_bytes() and stored.stat().st_mode & 0o044
    source_of = registry.boot_source(image.id)
    assert source_of.disk == str(stored) and source_of.kernel is None
    assert source_of.disk_bus == "virtio"


def test_import_refuses_what_cannot_boot(registry: ImageRegistry, tmp_path: Path) -> None:
    (tmp_path / "x.iso").write_bytes(b"x")
    with pytest.raises(InvalidInput, match="only standalone raw or qcow2"):
        registry.import_file(str(tmp_path / "x.iso"), "x", QemuImg("iso"))


@pytest.mark.parametrize(("fmt", "props", "message"), [
    ("vhd", {}, "disk_format 'vhd'"),
    ("ami", {"hw_disk_bus": "ide"}, "hw_disk_bus 'ide'"),
])
def test_register_checks_its_input(registry: ImageRegistry, fmt: str,
                                   props: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        registry.register("x", fmt, None, props)


def test_boot_source_of_a_missing_kernel(registry: ImageRegistry) -> None:
    machine = registry.register("m", "ami", None, {"kernel_id": "no-such"})
    with pytest.raises(ImageNotFound, match="no-such"):
        registry.boot_source(machine.id)
