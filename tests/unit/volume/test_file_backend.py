from __future__ import annotations

import os
import uuid

import pytest

from tether.exceptions import BackendError
from tether.volume.backends.file import GIB, FileBackend


def test_create_is_sparse_zeroed_and_private(tmp_path: os.PathLike[str]) -> None:
    b = FileBackend(str(tmp_path))
    vid = str(uuid.uuid4())
    path = b.create(vid, 2)
    st = os.stat(path)
    assert st.st_size == 2 * GIB
    assert st.st_blocks * 512 < 1024 * 1024  # sparse
    assert st.st_mode & 0o777 == 0o600
    with open(path, "rb") as f:
        assert f.read(4096) == b"\0" * 4096


def test_create_retry_is_idempotent_but_size_conflict_is_an_error(tmp_path: os.PathLike[str]
                                                                  ) -> None:
    b = FileBackend(str(tmp_path))
    vid = str(uuid.uuid4())
    assert b.create(vid, 1) == b.create(vid, 1)
    with pytest.raises(BackendError):
        b.create(vid, 2)


def test_deleted_data_never_readable_by_next_volume(tmp_path: os.PathLike[str]) -> None:
    b = FileBackend(str(tmp_path))
    first = str(uuid.uuid4())
    with open(b.create(first, 1), "r+b") as f:
        f.write(b"tenant-a-secret" * 1000)
    b.delete(first)
    b.delete(first)  # idempotent
    assert not b.exists(first)
    second = str(uuid.uuid4())
    with open(b.create(second, 1), "rb") as f:
        assert f.read(15000) == b"\0" * 15000


def test_path_rejects_non_uuid(tmp_path: os.PathLike[str]) -> None:
    with pytest.raises(ValueError, match="not a volume id"):
        FileBackend(str(tmp_path)).path("../etc/passwd")
