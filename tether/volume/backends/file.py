"""One sparse raw file per volume.

A volume's file is created new (``O_EXCL``) under a name derived from its
uuid and unlinked on delete, so its blocks go back to the filesystem and a
later volume can only ever read zeros from the holes of its own new file:
no tenant reads another's data through a reused file.
"""

from __future__ import annotations

import logging
import os
import re

from tether.exceptions import BackendError

LOG = logging.getLogger(__name__)
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
GIB = 1024**3


class FileBackend:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def path(self, volume_id: str) -> str:
        if not _UUID_RE.match(volume_id):
            raise ValueError(f"not a volume id: {volume_id!r}")
        return os.path.join(self.directory, f"volume-{volume_id}")

    def exists(self, volume_id: str) -> bool:
        return os.path.exists(self.path(volume_id))

    def create(self, volume_id: str, size_gib: int) -> str:
        path = self.path(volume_id)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            size = os.path.getsize(path)
            if size == size_gib * GIB:
                return path  # a retried create after a crash
            if size != 0:  # 0: a crash between the create and the sizing below
                raise BackendError(f"volume file {path} exists with another size") from None
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise BackendError(f"cannot create volume file {path}: {exc.strerror}") from exc
        try:
            os.ftruncate(fd, size_gib * GIB)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            raise BackendError(f"cannot size volume file {path}: {exc.strerror}") from exc
        os.close(fd)
        LOG.info("created volume file %s (%d GiB, sparse)", path, size_gib)
        return path

    def delete(self, volume_id: str) -> None:
        path = self.path(volume_id)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise BackendError(f"cannot delete volume file {path}: {exc.strerror}") from exc
        LOG.info("deleted volume file %s", path)
