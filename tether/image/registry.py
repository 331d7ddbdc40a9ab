"""The image registry: the images servers boot from, in the database, their
data as files in the images directory of the compute hosts.

Glance's kernel/ramdisk convention picks the boot: an image whose
properties name a ``kernel_id`` (and ``ramdisk_id``, ``os_command_line``)
boots that kernel directly; its own file, when it has one, is the guest's
root disk.  A machine image without a file (Tether's tiny image) runs from
its initramfs alone.  ``hw_disk_bus`` (scsi | virtio), as in Nova, is the bus
of the volumes attached to its servers without a device name.

Reads check policy (public images for everyone, private ones for their
project); registering is an operator's local act (``tether image import``,
``tether image build-tiny``), as the image API is read-only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_

from tether import policy, statedir
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database
from tether.db.records import IMAGES, ImageRecord, by
from tether.exceptions import InvalidInput, NotFound
from tether.executor import CommandError, Runner

LOG = logging.getLogger(__name__)

DISK_FORMATS = ("raw", "qcow2", "aki", "ari", "ami")
BOOTABLE = ("raw", "qcow2", "ami")  # aki / ari are parts of a machine image
CONTAINER = {"raw": "bare", "qcow2": "bare", "aki": "aki", "ari": "ari", "ami": "ami"}
DISK_BUSES = ("scsi", "virtio")


class ImageNotFound(NotFound):
    def __init__(self, image_id: str) -> None:
        super().__init__(f"Image {image_id} could not be found.", image_id=image_id)


@dataclass(frozen=True)
class BootSource:
    """What a compute host needs to boot an image: paths in its images directory."""

    image_id: str
    disk: str | None = None  # raw or qcow2 root disk
    kernel: str | None = None
    ramdisk: str | None = None
    cmdline: str | None = None
    disk_bus: str | None = None  # default bus of attached volumes


_I = IMAGES.columns

def is_image_id(ref: str) -> bool:
    try:
        return str(uuid.UUID(ref)) == ref.lower()
    except ValueError:
        return False


class ImageRegistry:
    def __init__(self, db: Database, images_dir: str) -> None:
        self.db = db
        self.images_dir = images_dir

    # -- reads (the API) -----------------------------------------------------------

    def list(self, ctx: RequestContext, name: str | None = None) -> list[ImageRecord]:
        policy.authorize(ctx, "get_images")
        q = by(IMAGES, _I["deleted"].is_(False), order=[_I["created_at"].desc(), _I["id"]])
        if not ctx.privileged:
            q = q.where(or_(_I["visibility"] == "public", _I["owner"] == ctx.project_id))
        if name is not None:
            q = q.where(_I["name"] == name)
        with self.db.begin() as c:
            return IMAGES.all(c, q)

    def get(self, ctx: RequestContext, image_id: str) -> ImageRecord:
        """404 for unknown images and for another project's private ones."""
        with self.db.begin() as c:
            row = IMAGES.get(c, image_id) if is_image_id(image_id) else None
        if (row is None or row.deleted
                or (row.visibility != "public"
                    and not policy.allowed(ctx, "get_image", row.owner))):
            raise ImageNotFound(image_id)
        return row

    def bootable(self, ctx: RequestContext, image_id: str) -> ImageRecord:
        """The image a server of ``ctx`` may boot (InvalidInput otherwise, as
        Nova answers 400 for a bad imageRef)."""
        try:
            image = self.get(ctx, image_id)
        except ImageNotFound as exc:
            raise InvalidInput(f"{exc} Give the id of an image in GET /v2/images (or a "
                               "file name in the images directory).") from None
        if image.status != "active" or image.disk_format not in BOOTABLE:
            raise InvalidInput(f"Image {image_id} is {image.disk_format} in status "
                               f"{image.status}: only active {', '.join(BOOTABLE)} images "
                               "boot.")
        return image

    def boot_source(self, image_id: str) -> BootSource:
        """The files of an image and of the kernel and ramdisk it names."""
        with self.db.begin() as c:
            image = IMAGES.get(c, image_id)
            if image is None or image.deleted:
                raise ImageNotFound(image_id)
            props = dict(image.properties or {})

            def part(key: str) -> str | None:
                ref = props.get(key)
                if not ref:
                    return None
                row = IMAGES.get(c, str(ref))
                if row is None or row.deleted or not row.file:
                    raise ImageNotFound(str(ref))
                return self.path(row.file)

            return BootSource(
                image_id=image.id, disk=self.path(image.file) if image.file else None,
                kernel=part("kernel_id"), ramdisk=part("ramdisk_id"),
                cmdline=props.get("os_command_line"), disk_bus=props.get("hw_disk_bus"))

    def path(self, file: str) -> str:
        return os.path.join(self.images_dir, file)

    def find(self, name: str) -> ImageRecord | None:
        with self.db.begin() as c:
            return IMAGES.first(c, by(IMAGES, _I["name"] == name, _I["deleted"].is_(False),
                                      order=[_I["created_at"].desc()]))

    # -- registering (operator, local) ---------------------------------------------

    def register(self, name: str, disk_format: str, file: str | None = None,
                 properties: dict[str, Any] | None = None, visibility: str = "public",
                 owner: str | None = None) -> ImageRecord:
        """Record an image whose data (if any) is already ``file`` in the images dir."""
        if disk_format not in DISK_FORMATS:
            raise InvalidInput(f"disk_format {disk_format!r}: expected one of "
                               f"{', '.join(DISK_FORMATS)}.")
        bus = (properties or {}).get("hw_disk_bus")
        if bus is not None and bus not in DISK_BUSES:
            raise InvalidInput(f"hw_disk_bus {bus!r}: expected scsi or virtio.")
        size, checksum = None, None
        if file is not None:
            size, checksum = _digest(self.path(file))
        with self.db.begin() as c:
            stored = IMAGES.insert(c, {
                "id": str(uuid.uuid4()), "name": name, "owner": owner,
                "visibility": visibility, "status": "active", "disk_format": disk_format,
                "container_format": CONTAINER[disk_format], "size": size,
                "checksum": checksum, "file": file, "properties": dict(properties or {}),
                "created_at": models.utcnow(), "deleted": False})
        LOG.info("image %s (%s) registered: %s", stored.id, name, file or "no file")
        return stored

    def import_file(self, source: str, name: str, runner: Runner,
                    properties: dict[str, Any] | None = None) -> ImageRecord:
        """Copy a local raw or qcow2 file into the images directory and register it."""
        try:
            info = json.loads(runner.run(["qemu-img", "info", "--output=json",
                                          source]).stdout)
        except (CommandError, ValueError) as exc:
            raise InvalidInput(f"{source} is not an image qemu-img can read: {exc}") from exc
        fmt = info.get("format")
        if fmt not in ("raw", "qcow2") or info.get("backing-filename"):
            raise InvalidInput(f"{source} is {fmt}: only standalone raw or qcow2 files "
                               "can be imported.")
        file = f"{uuid.uuid4()}.{fmt}"
        self.store(source, file)
        return self.register(name, fmt, file, properties)

    def store(self, source: str, file: str) -> None:
        """Copy ``source`` into the images directory as ``file`` (readable by QEMU)."""
        # QEMU reads base images by path: 0644 files in a folder it cannot list
        statedir.directory(self.images_dir, statedir.PASSAGE_DIR)
        tmp = self.path(f".{file}.part")
        shutil.copyfile(source, tmp)
        os.chmod(tmp, statedir.SHARED_FILE)
        os.replace(tmp, self.path(file))


def _digest(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return os.path.getsize(path), h.hexdigest()
