"""Images a server boots from, on its compute host.

``imageRef`` is an image id of the registry (:mod:`tether.image.registry`)
or names a file in the images directory (raw or qcow2).  A root disk boots
from the server's own copy-on-write overlay in ``<instances_dir>/<uuid>``,
so the image is never written; a registry image naming a kernel boots it
directly.  File names are plain names: a path could make any host file (say
/etc/shadow) a tenant's disk.  Every image-booted guest gets a serial
console log and a second serial port on ``agent.sock`` (the tiny image's
guest agent talks there; other guests leave it alone).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import replace

from tether import statedir
from tether.exceptions import BackendError
from tether.executor import CommandError, Runner
from tether.image.registry import ImageRegistry, is_image_id
from tether.virt.driver import ServerSpec

LOG = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FORMATS = ("raw", "qcow2")


def valid_image_ref(ref: str) -> bool:
    return bool(_NAME_RE.match(ref)) and ".." not in ref


class LocalImages:
    def __init__(self, images_dir: str, instances_dir: str, runner: Runner,
                 registry: ImageRegistry | None = None) -> None:
        self.images_dir = images_dir
        self.instances_dir = instances_dir
        self.runner = runner
        self.registry = registry

    def instance_dir(self, server_uuid: str) -> str:
        return os.path.join(self.instances_dir, server_uuid)

    def console_log(self, server_uuid: str) -> str:
        """Where the guest's serial console goes (its folder made if needed)."""
        self._folder(server_uuid)
        return os.path.join(self.instance_dir(server_uuid), "console.log")

    def _folder(self, server_uuid: str) -> str:
        """The server's folder: QEMU's user passes through it (0711) to the
        files libvirt gives it; it can list nothing (tether.statedir)."""
        statedir.directory(self.instances_dir, statedir.PASSAGE_DIR)
        return statedir.directory(self.instance_dir(server_uuid), statedir.PASSAGE_DIR)

    def agent_socket(self, server_uuid: str) -> str:
        return os.path.join(self.instance_dir(server_uuid), "agent.sock")

    def boot_spec(self, spec: ServerSpec, image_ref: str) -> ServerSpec:
        """``spec`` booting the image: root disk overlay, kernel, console, agent port."""
        spec = replace(spec, console_log=self.console_log(spec.uuid),
                       agent_socket=self.agent_socket(spec.uuid))
        if not is_image_id(image_ref) or self.registry is None:
            return replace(spec, root_disk=self.prepare_root_disk(spec.uuid, image_ref))
        source = self.registry.boot_source(image_ref)
        for path in (source.disk, source.kernel, source.ramdisk):
            if path is not None and not os.path.isfile(path):
                raise BackendError(f"Image {image_ref}: {path} is missing on this host.")
        root = self._overlay(spec.uuid, source.disk, image_ref) if source.disk else None
        return replace(spec, root_disk=root, kernel=source.kernel, initrd=source.ramdisk,
                       cmdline=source.cmdline)

    def prepare_root_disk(self, server_uuid: str, image_ref: str) -> str:
        """A qcow2 overlay on the image file ``image_ref``, for this server alone."""
        if not valid_image_ref(image_ref):
            raise BackendError(f"Image {image_ref!r} is not a file name in the images "
                               "directory.")
        return self._overlay(server_uuid, os.path.join(self.images_dir, image_ref), image_ref)

    def _overlay(self, server_uuid: str, image: str, image_ref: str) -> str:
        if not os.path.isfile(image):
            raise BackendError(f"Image {image_ref} not found in {self.images_dir}.")
        try:
            info = json.loads(self.runner.run(
                ["qemu-img", "info", "--output=json", image]).stdout)
        except (CommandError, ValueError) as exc:
            raise BackendError(f"Image {image_ref} is not readable: {exc}") from exc
        fmt = info.get("format")
        if fmt not in FORMATS or info.get("backing-filename"):
            raise BackendError(f"Image {image_ref} is {fmt}"
                               f"{' with a backing file' if info.get('backing-filename') else ''}"
                               f": only standalone {' or '.join(FORMATS)} images boot.")
        folder = self._folder(server_uuid)
        overlay = os.path.join(folder, "disk.qcow2")
        if not os.path.exists(overlay):
            self.runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
                             "-b", image, overlay])
        LOG.info("server %s boots from image %s (overlay %s)", server_uuid, image_ref, overlay)
        return overlay

    def remove(self, server_uuid: str) -> None:
        shutil.rmtree(self.instance_dir(server_uuid), ignore_errors=True)

    def instance_folders(self) -> list[str]:
        """The servers this host keeps files for (folders named by UUID)."""
        try:
            names = os.listdir(self.instances_dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if _UUID_RE.match(n)
                      and os.path.isdir(self.instance_dir(n)))
