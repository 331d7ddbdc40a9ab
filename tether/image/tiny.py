"""Tether's tiny Linux image, built on this host from Debian packages only.

A Debian cloud kernel (``linux-image-cloud-amd64`` names the current one)
and ``busybox-static`` are fetched with ``apt-get download`` and unpacked
with ``dpkg-deb -x``; Tether writes the initramfs itself (a newc cpio,
gzipped): busybox, the virtio / SCSI modules the kernel needs to see
volumes (their dependencies read from the modules' own ``depends=``), and
``tiny_init.sh`` as ``/init``, which loads them and serves the guest agent
(:mod:`tether.image.agent`) on the second serial port.

Everything is cached under ``cache_dir`` keyed by the two packages'
versions and the init script, so a second build (another test session, the
demo after the tests) reuses the first one's files.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources

from tether import statedir
from tether.db.records import ImageRecord
from tether.executor import Runner
from tether.image.registry import ImageNotFound, ImageRegistry

LOG = logging.getLogger(__name__)

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
# what a guest needs to see volumes on virtio-scsi and virtio-blk (the
# loader adds each module's dependencies first)
MODULES = ("virtio_pci", "virtio_scsi", "sd_mod", "virtio_blk")
CMDLINE = "console=ttyS0 quiet panic=-1"
READY_MARKER = "TETHER-TINY-READY"


class TinyBuildError(Exception):
    """The tiny image cannot be built here (say why, and what to install)."""


@dataclass(frozen=True)
class TinyImage:
    """The built artefacts (paths in the cache) and what they were built from."""

    name: str  # tether-tiny-<kernel release>
    kernel: str
    initrd: str
    kernel_release: str  # 6.1.0-56-cloud-amd64
    packages: tuple[str, ...]  # name=version of each package used
    cmdline: str = CMDLINE


class TinyBuilder:
    def __init__(self, cache_dir: str, runner: Runner) -> None:
        self.cache_dir = cache_dir
        self.runner = runner

    # -- package resolution (local apt metadata, no download) ---------------------

    def _kernel_package(self) -> str:
        out = self.runner.run(["apt-cache", "depends", KERNEL_META]).stdout
        for line in out.splitlines():
            dep = line.strip().removeprefix("Depends:").strip()
            if line.strip().startswith("Depends:") and dep.startswith("linux-image-"):
                return dep
        raise TinyBuildError(f"{KERNEL_META} names no kernel package in apt's lists; run "
                             "`apt-get update`.")

    def _version(self, package: str) -> str:
        out = self.runner.run(["apt-cache", "show", "--no-all-versions", package]).stdout
        for line in out.splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
        raise TinyBuildError(f"apt knows no version of {package}; run `apt-get update`.")

    # -- build ---------------------------------------------------------------------

    def build(self) -> TinyImage:
        """The tiny image's files, from the cache when it has them."""
        kernel_pkg = self._kernel_package()
        packages = {kernel_pkg: self._version(kernel_pkg), BUSYBOX: self._version(BUSYBOX)}
        init = _init_script()
        key = hashlib.sha256(repr((sorted(packages.items()), MODULES, init)).encode()
                             ).hexdigest()[:16]
        release = kernel_pkg.removeprefix("linux-image-")
        out = os.path.join(self.cache_dir, f"tiny-{release}-{key}")
        image = TinyImage(name=f"tether-tiny-{release}",
                          kernel=os.path.join(out, "vmlinuz"),
                          initrd=os.path.join(out, "initrd.img"),
                          kernel_release=release,
                          packages=tuple(f"{n}={v}" for n, v in sorted(packages.items())))
        if os.path.exists(image.kernel) and os.path.exists(image.initrd):
            LOG.info("tiny image %s: cached in %s", image.name, out)
            return image
        # nothing here is read by QEMU: register() copies the kernel and initrd
        # into the images folder
        statedir.directory(self.cache_dir, statedir.PRIVATE_DIR)
        debs = [self._download(name, version) for name, version in packages.items()]
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as work:
            root = os.path.join(work, "root")
            for deb in debs:
                self.runner.run(["dpkg-deb", "-x", deb, root], timeout=300)
            staged = os.path.join(work, "out")
            os.mkdir(staged, statedir.PRIVATE_DIR)
            shutil.copyfile(os.path.join(root, "boot", f"vmlinuz-{release}"),
                            os.path.join(staged, "vmlinuz"))
            with open(os.path.join(staged, "initrd.img"), "wb") as f:
                f.write(initramfs(root, release, init))
            try:
                os.replace(staged, out)  # whole or not at all, for concurrent builders
            except OSError:
                if not os.path.exists(image.initrd):
                    raise  # not another builder's finished copy
        LOG.info("tiny image %s built in %s", image.name, out)
        return image

    def _download(self, name: str, version: str) -> str:
        debs = os.path.join(self.cache_dir, "debs")
        statedir.directory(debs, statedir.PRIVATE_DIR)
        # apt names the file name_version_arch.deb with the epoch's ':' as %3a
        prefix = f"{name}_{version.replace(':', '%3a')}_"
        found = [f for f in os.listdir(debs) if f.startswith(prefix) and f.endswith(".deb")]
        if not found:
            self.runner.run(["apt-get", "download", "-q", f"{name}={version}"], cwd=debs,
                            timeout=600)
            found = [f for f in os.listdir(debs) if f.startswith(prefix)
                     and f.endswith(".deb")]
        if not found:
            raise TinyBuildError(f"apt-get download of {name}={version} left no .deb in "
                                 f"{debs}.")
        return os.path.join(debs, found[0])


def _init_script() -> bytes:
    return resources.files("tether.image").joinpath("tiny_init.sh").read_bytes()


def module_order(modules_dir: str, wanted: tuple[str, ...]) -> list[str]:
    """``wanted`` and their dependencies, each after what it depends on; names
    are paths under ``modules_dir`` without ``.ko``."""
    paths: dict[str, str] = {}
    for folder, _dirs, files in os.walk(modules_dir):
        for f in files:
            if f.endswith(".ko"):
                paths[f[:-3].replace("-", "_")] = os.path.join(folder, f)
    order: list[str] = []

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if name in order:
            return
        if name in trail:
            raise TinyBuildError(f"module dependency cycle: {' -> '.join((*trail, name))}")
        path = paths.get(name)
        if path is None:
            raise TinyBuildError(f"kernel module {name} is not in {modules_dir}.")
        for dep in _depends(path):
            visit(dep, (*trail, name))
        order.append(name)

    for name in wanted:
        visit(name, ())
    return [os.path.relpath(paths[n], modules_dir)[:-3] for n in order]


def _depends(path: str) -> list[str]:
    with open(path, "rb") as f:
        data = f.read()
    at = data.find(b"\0depends=")
    if at < 0:
        return []
    value = data[at + 9:data.index(b"\0", at + 1)].decode()
    return [d.replace("-", "_") for d in value.split(",") if d]


def initramfs(root: str, release: str, init: bytes) -> bytes:
    """The gzipped newc cpio: /init, busybox, the modules and /etc/modules."""
    modules_dir = os.path.join(root, "lib", "modules", release)
    order = module_order(modules_dir, MODULES)
    archive = Cpio()
    for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp"):
        archive.directory(d)
    archive.device("dev/console", 5, 1)
    archive.file("init", init, 0o755)
    with open(os.path.join(root, "bin", "busybox"), "rb") as f:
        archive.file("bin/busybox", f.read(), 0o755)
    archive.symlink("bin/sh", "busybox")
    names = []
    for rel in order:
        name = os.path.basename(rel)
        names.append(name)
        with open(os.path.join(modules_dir, rel + ".ko"), "rb") as f:
            archive.file(f"lib/modules/{name}.ko", f.read(), 0o644)
    archive.file("etc/modules", ("\n".join(names) + "\n").encode(), 0o644)
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


class Cpio:
    """A newc ("070701") archive, the format the kernel unpacks as initramfs;
    written here so no cpio tool (nor root, for /dev/console) is needed."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
               nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1],
                  len(encoded), 0)
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % v for v in fields))
        self.buf.write(encoded)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755, nlink=2)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return self.buf.getvalue()


def register(registry: ImageRegistry, image: TinyImage) -> tuple[ImageRecord, bool]:
    """The registered machine image of ``image`` (kernel ``aki`` + ramdisk
    ``ari`` + an ``ami`` naming both, with no disk of its own), and whether
    this call registered it: an image with the same files is reused."""
    stem = os.path.basename(os.path.dirname(image.kernel))  # tiny-<release>-<key>
    kernel_file, initrd_file = f"{stem}.vmlinuz", f"{stem}.initrd"
    existing = registry.find(image.name)
    if existing is not None:
        props = existing.properties or {}
        try:
            source = registry.boot_source(existing.id)
        except ImageNotFound:
            source = None
        if (source is not None and source.kernel == registry.path(kernel_file)
                and os.path.exists(source.kernel) and props.get("ramdisk_id")):
            return existing, False
    registry.store(image.kernel, kernel_file)
    registry.store(image.initrd, initrd_file)
    built_from = ", ".join(image.packages)
    kernel = registry.register(f"{image.name}-kernel", "aki", kernel_file,
                               {"built_from": built_from})
    ramdisk = registry.register(f"{image.name}-initrd", "ari", initrd_file,
                                {"built_from": built_from})
    machine = registry.register(image.name, "ami", None, {
        "kernel_id": kernel.id, "ramdisk_id": ramdisk.id, "os_command_line": image.cmdline,
        "os_distro": "debian", "tether_agent": "serial1", "built_from": built_from})
    return machine, True
