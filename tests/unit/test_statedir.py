"""Files at rest: created with their final mode whatever the umask, SQLite's
own WAL/SHM files private after real writes, older installations tightened
with a warning, and a file two processes create at once made by one."""

from __future__ import annotations

import logging
import multiprocessing
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tether import config, statedir
from tether.db.api import Database


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A careless umask (0000): what Tether creates must not depend on it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_sqlites_wal_and_shm_are_private_after_real_writes(tmp_path: Path,
                                                           open_umask: None) -> None:
    url = f"sqlite:///{tmp_path}/tether.db"
    statedir.database_files(url)
    db = Database(url)
    try:
        with db.engine.begin() as c:
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            c.execute(text("CREATE TABLE t (x TEXT)"))
            c.execute(text("INSERT INTO t VALUES ('secret')"))
        names = sorted(os.listdir(tmp_path))
        assert names == ["tether.db", "tether.db-shm", "tether.db-wal"]
        assert {n: mode(tmp_path / n) for n in names} == dict.fromkeys(names, 0o600)
    finally:
        db.dispose()


def test_without_it_sqlite_would_make_them_world_readable(tmp_path: Path,
                                                          open_umask: None) -> None:
    """The check above can fail: SQLite's own default is 0644."""
    db = Database(f"sqlite:///{tmp_path}/tether.db")
    try:
        with db.engine.begin() as c:
            c.execute(text("CREATE TABLE t (x TEXT)"))
        assert mode(tmp_path / "tether.db") & 0o044
    finally:
        db.dispose()


def test_directories_get_exactly_their_mode_whatever_the_umask(tmp_path: Path,
                                                               open_umask: None) -> None:
    statedir.directory(str(tmp_path / "a" / "b"), statedir.PASSAGE_DIR)
    assert mode(tmp_path / "a") == 0o700  # a parent made on the way: private
    assert mode(tmp_path / "a" / "b") == 0o711
    os.umask(0o077)
    statedir.directory(str(tmp_path / "c"), statedir.PASSAGE_DIR)
    assert mode(tmp_path / "c") == 0o711  # QEMU must still pass


def test_an_older_installation_is_tightened_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state"
    (state / "volumes").mkdir(parents=True)
    (state / "images").mkdir()
    for name in ("tether.db", "tether.db-wal", "tether.db-shm", "tether.log",
                 "service_token", "secret.key", "volumes/volume-1"):
        (state / name).write_text("x")
    for path in [state, *state.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    conf = config.load(state_dir=str(state))
    with caplog.at_level(logging.WARNING, "tether.statedir"):
        statedir.state_dir(conf)
        statedir.database_files(config.database_url(conf))
        said: list[str] = []
        statedir.log_file(conf, said.append)
    assert mode(state) == 0o711
    assert mode(state / "volumes") == 0o700
    assert mode(state / "images") == 0o711
    for name in ("tether.db", "tether.db-wal", "tether.db-shm", "service_token",
                 "secret.key", "tether.log"):
        assert mode(state / name) == 0o600, name
    assert f"{state}/service_token was mode 0644, more open than 0600: tightened to 0600" \
        in caplog.text
    assert said == [f"{state}/tether.log was mode 0644, more open than 0600: tightened to "
                    "0600"]
    # (a volume file is the backend's: created 0600 by it, see test_file_backend)
    caplog.clear()
    statedir.state_dir(conf)
    assert caplog.text == ""  # nothing more to say the second time


def test_a_state_dir_qemu_never_enters_is_private(tmp_path: Path) -> None:
    conf = config.load(state_dir=str(tmp_path / "s"), overrides={
        "compute": {"instances_dir": str(tmp_path / "inst"),
                    "images_dir": str(tmp_path / "img")}})
    statedir.state_dir(conf)
    assert mode(tmp_path / "s") == 0o700


def test_read_or_create_one_winner_among_threads(tmp_path: Path) -> None:
    path = str(tmp_path / "key")
    got: list[str] = []
    start = threading.Barrier(16)

    def racer(i: int) -> None:
        start.wait()
        got.append(statedir.read_or_create(path, f"value-{i}\n"))

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(set(got)) == 1 and got[0].startswith("value-")
    with open(path) as f:
        assert f.read() == got[0]
    assert mode(path) == 0o600
    assert os.listdir(tmp_path) == ["key"]  # no temporary file left


def _create(path: str, i: int, out: multiprocessing.Queue[str]) -> None:
    out.put(statedir.read_or_create(path, f"process-{i}\n"))


def test_read_or_create_one_winner_among_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "key")
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_create, args=(path, i, out)) for i in range(6)]
    for p in procs:
        p.start()
    got = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert len(set(got)) == 1
    with open(path) as f:
        assert f.read() == got[0]
