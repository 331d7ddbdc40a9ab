"""Local images a server boots from.

``imageRef`` names a file in the images directory (raw or qcow2); the server
boots from its own copy-on-write overlay in ``<state_dir>/instances/<uuid>``,
so the image is never written.  Names are plain file names: a path could
make any host file (say /etc/shadow) a tenant's disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

from tether.exceptions import BackendError
from tether.executor import CommandError, Runner

LOG = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,254}$")
FORMATS = ("raw", "qcow2")


def valid_image_ref(ref: str) -> bool:
    return bool(_NAME_RE.match(ref)) and ".." not in ref


class LocalImages:
    def __init__(self, images_dir: str, instances_dir: str, runner: Runner) -> None:
        self.images_dir = images_dir
        self.instances_dir = instances_dir
        self.runner = runner

    def instance_dir(self, server_uuid: str) -> str:
        return os.path.join(self.instances_dir, server_uuid)

    def console_log(self, server_uuid: str) -> str:
        """Where the guest's serial console goes (its folder made if needed)."""
        os.makedirs(self.instance_dir(server_uuid), mode=0o711, exist_ok=True)
        return os.path.join(self.instance_dir(server_uuid), "console.log")

    def prepare_root_disk(self, server_uuid: str, image_ref: str) -> str:
        """A qcow2 overlay on the image, for this server alone; its path."""
        if not valid_image_ref(image_ref):
            raise BackendError(f"Image {image_ref!r} is not a file name in the images "
                               "directory.")
        image = os.path.join(self.images_dir, image_ref)
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
        folder = self.instance_dir(server_uuid)
        os.makedirs(folder, mode=0o711, exist_ok=True)
        overlay = os.path.join(folder, "disk.qcow2")
        if not os.path.exists(overlay):
            self.runner.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt,
                             "-b", image, overlay])
        LOG.info("server %s boots from image %s (overlay %s)", server_uuid, image_ref, overlay)
        return overlay

    def remove(self, server_uuid: str) -> None:
        shutil.rmtree(self.instance_dir(server_uuid), ignore_errors=True)
