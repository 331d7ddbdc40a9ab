"""What Tether keeps on disk, and with which modes (``docs/security.md``,
"Local users and files at rest").

Everything in the state dir is private to root (files 0600, directories
0700) except the passages QEMU's own user (``libvirt-qemu``) takes to the
files libvirt hands it: the state dir itself, ``instances/`` and each
server's folder are 0711 (enter a path you know, list nothing) when they are
on QEMU's way, and ``images/`` holds read-only base images (0644 in a 0711
folder).  Files are created with their final mode (``os.open`` with the
mode, before any byte is written); SQLite gives its ``-wal``, ``-shm`` and
``-journal`` files the mode of the database file, so the database file is
made 0600 before SQLite first opens it.

An existing installation whose files or folders are more open than that is
tightened when a service starts, with a warning naming each one.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Callable

from oslo_config import cfg
from sqlalchemy.engine import make_url

from tether import config

LOG = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
PASSAGE_DIR = 0o711  # QEMU's user walks through to a path it was given; no listing
SHARED_FILE = 0o644  # read-only base images QEMU reads

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


Say = Callable[[str], None]


def _warn(message: str) -> None:
    LOG.warning("%s", message)


def tighten(path: str, mode: int, say: Say = _warn) -> bool:
    """Take away every permission of ``path`` beyond ``mode`` (never adds any)
    and ``say`` so; True if it had to.  A missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False  # (chmod would follow it: a link is the operator's choice)
    have = stat.S_IMODE(st.st_mode)
    if have & ~mode:
        os.chmod(path, have & mode)
        say(f"{path} was mode {have:04o}, more open than {mode:04o}: tightened to "
            f"{have & mode:04o}")
        return True
    return False


def directory(path: str, mode: int, say: Say = _warn) -> str:
    """``path`` as a directory of exactly ``mode`` when this call makes it
    (whatever the umask), and no more open than ``mode`` when it exists."""
    try:
        os.mkdir(path, PRIVATE_DIR)
    except FileExistsError:
        tighten(path, mode, say)
        return path
    except FileNotFoundError:
        directory(os.path.dirname(path) or ".", PRIVATE_DIR, say)
        return directory(path, mode, say)
    os.chmod(path, mode)  # from 0700 to what it must be: never more open on the way
    return path


def private_file(path: str, say: Say = _warn) -> str:
    """``path`` existing as a regular file no more open than 0600: created
    empty with that mode when missing (nothing is truncated)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE)
    os.close(fd)
    tighten(path, PRIVATE_FILE, say)
    return path


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.abspath(path), os.path.abspath(folder)]) == \
        os.path.abspath(folder)


def state_dir_mode(conf: cfg.ConfigOpts) -> int:
    """0711 when QEMU must pass through the state dir (the instances or images
    folder is inside it), else 0700."""
    on_qemus_way = (config.instances_dir(conf), config.images_dir(conf))
    if any(_inside(p, conf.state_dir) for p in on_qemus_way):
        return PASSAGE_DIR
    return PRIVATE_DIR


def state_dir(conf: cfg.ConfigOpts) -> str:
    """The state dir with its mode, and its private files tightened."""
    path: str = conf.state_dir
    directory(path, state_dir_mode(conf))
    for name in ("service_token", "secret.key", "service_password", "initiator_iqn",
                 "token.key", "admin-password"):
        tighten(os.path.join(path, name), PRIVATE_FILE)
    for sub, mode in ((config.volumes_dir(conf), PRIVATE_DIR),
                      (config.lock_dir(conf), PRIVATE_DIR),
                      (config.instances_dir(conf), PASSAGE_DIR),
                      (config.images_dir(conf), PASSAGE_DIR),
                      (config.image_cache_dir(conf), PRIVATE_DIR)):
        if _inside(sub, path):
            tighten(sub, mode)
    return path


def log_file(conf: cfg.ConfigOpts, say: Say) -> str:
    """The log file, 0600 before its first line (logging is not set up yet:
    what was tightened is told to ``say``)."""
    directory(conf.state_dir, state_dir_mode(conf), say)
    path: str = conf.log_file or os.path.join(conf.state_dir, "tether.log")
    return private_file(path, say)


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite URL (None for another database or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or \
            parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return os.path.abspath(parsed.database)


def database_files(url: str) -> None:
    """A SQLite database file made 0600 before SQLite opens it (its WAL, SHM
    and journal then get the same mode from SQLite), and those of an older
    installation tightened."""
    path = sqlite_file(url)
    if path is None:
        return
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        tighten(path + suffix, PRIVATE_FILE)


def read_or_create(path: str, make: str) -> str:
    """The content of the private file ``path``; when it does not exist, it is
    created 0600 holding ``make`` -- whole or not at all: written to a
    private temporary file that is then linked to ``path``, so that of two
    processes starting at once exactly one creates it and the other reads
    the winner's complete content."""
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except FileNotFoundError:
        pass
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(make)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            with open(path, encoding="ascii") as f:
                return f.read()
        return make
    finally:
        os.unlink(tmp)
