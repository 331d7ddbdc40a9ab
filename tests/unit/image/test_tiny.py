"""The tiny image builder without apt: a fake runner plays apt-cache,
apt-get download and dpkg-deb; the initramfs is unpacked and checked."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from tether.db import migrate
from tether.db.api import Database
from tether.executor import CommandResult
from tether.image import tiny
from tether.image.registry import ImageRegistry

RELEASE = "6.1.0-99-cloud-amd64"
DEPENDS = {"virtio": "", "virtio_ring": "", "virtio_pci_modern_dev": "",
           "virtio_pci": "virtio,virtio_ring,virtio_pci_modern_dev", "scsi_common": "",
           "scsi_mod": "scsi_common", "virtio_scsi": "virtio,virtio_ring,scsi_mod",
           "sd_mod": "scsi_mod,scsi_common", "virtio_blk": "virtio,virtio_ring",
           "unrelated": ""}


class FakeApt:
    """apt-cache, apt-get download and dpkg-deb -x, on fake packages."""

    def __init__(self) -> None:
        self.downloads: list[str] = []

    def run(self, argv: Sequence[str], *, check: bool = True, secrets: Sequence[str] = (),
            timeout: float | None = 60.0, cwd: str | None = None) -> CommandResult:
        args = list(argv)
        out = ""
        if args[:2] == ["apt-cache", "depends"]:
            out = f"{tiny.KERNEL_META}\n  Depends: linux-image-{RELEASE}\n"
        elif args[:2] == ["apt-cache", "show"]:
            out = "Package: x\nVersion: 1:1.2-3\n"
        elif args[:2] == ["apt-get", "download"]:
            assert cwd is not None
            name, version = args[-1].split("=")
            self.downloads.append(name)
            Path(cwd, f"{name}_{version.replace(':', '%3a')}_amd64.deb").write_text(name)
        elif args[:2] == ["dpkg-deb", "-x"]:
            self._unpack(Path(args[2]).read_text(), Path(args[3]))
        else:
            raise AssertionError(f"unexpected command {args}")
        return CommandResult(tuple(args), 0, out, "")

    @staticmethod
    def _unpack(package: str, root: Path) -> None:
        if package == tiny.BUSYBOX:
            (root / "bin").mkdir(parents=True, exist_ok=True)
            (root / "bin" / "busybox").write_bytes(b"\x7fELF busybox")
            return
        (root / "boot").mkdir(parents=True, exist_ok=True)
        (root / "boot" / f"vmlinuz-{RELEASE}").write_bytes(b"bzImage")
        drivers = root / "lib" / "modules" / RELEASE / "kernel" / "drivers"
        for name, deps in DEPENDS.items():
            folder = drivers / ("scsi" if "scsi" in name or name == "sd_mod" else "virtio")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.ko").write_bytes(
                b"\x7fELF...\0license=GPL\0depends=" + deps.encode() + b"\0name=" +
                name.encode() + b"\0")


def unpack_cpio(data: bytes) -> dict[str, tuple[int, bytes, int, int]]:
    """name -> (mode, data, rdevmajor, rdevminor) of a newc archive."""
    entries, at = {}, 0
    while True:
        assert data[at:at + 6] == b"070701"
        fields = [int(data[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = data[at + 110:at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += -at % 4
        body = data[at:at + filesize]
        at += filesize
        at += -at % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], body, fields[9], fields[10])


def test_build_makes_an_initramfs_with_the_modules_in_dependency_order(
        tmp_path: Path) -> None:
    apt = FakeApt()
    image = tiny.TinyBuilder(str(tmp_path / "cache"), apt).build()
    assert image.name == f"tether-tiny-{RELEASE}" and image.kernel_release == RELEASE
    assert Path(image.kernel).read_bytes() == b"bzImage"
    files = unpack_cpio(gzip.decompress(Path(image.initrd).read_bytes()))
    assert files["init"][0] == 0o100755 and files["init"][1].startswith(b"#!/bin/sh")
    assert files["dev/console"][0] == 0o020600 and files["dev/console"][2:] == (5, 1)
    assert files["bin/sh"] == (0o120777, b"busybox", 0, 0)
    order = files["etc/modules"][1].decode().split()
    assert "unrelated" not in order and set(order) == set(DEPENDS) - {"unrelated"}
    for name in order:
        assert f"lib/modules/{name}.ko" in files
        for dep in filter(None, DEPENDS[name].split(",")):
            assert order.index(dep) < order.index(name), (dep, name)
    assert sorted(apt.downloads) == sorted([tiny.BUSYBOX, f"linux-image-{RELEASE}"])


def test_second_build_uses_the_cache(tmp_path: Path) -> None:
    first = tiny.TinyBuilder(str(tmp_path), FakeApt()).build()
    apt = FakeApt()
    again = tiny.TinyBuilder(str(tmp_path), apt).build()
    assert again == first and apt.downloads == []


def test_missing_module_says_which(tmp_path: Path) -> None:
    (tmp_path / "a.ko").write_bytes(b"\0depends=b\0")
    with pytest.raises(tiny.TinyBuildError, match="kernel module b is not in"):
        tiny.module_order(str(tmp_path), ("a",))


def test_register_is_idempotent(tmp_path: Path) -> None:
    db = Database("sqlite://")
    migrate.upgrade(db)
    registry = ImageRegistry(db, str(tmp_path / "images"))
    image = tiny.TinyBuilder(str(tmp_path / "cache"), FakeApt()).build()
    machine, new = tiny.register(registry, image)
    assert new and machine.disk_format == "ami" and machine.file is None
    source = registry.boot_source(machine.id)
    assert source.kernel is not None and os.path.exists(source.kernel)
    assert source.ramdisk is not None and os.path.exists(source.ramdisk)
    assert source.cmdline == tiny.CMDLINE and source.disk is None
    again, new = tiny.register(registry, image)
    assert not new and again.id == machine.id
