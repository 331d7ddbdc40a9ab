"""CHAP secrets at rest: sealed in the database, opened for the target; a
missing or wrong key stops the volume service at start; secrets an older
Tether kept in clear are sealed at start (idempotent, a crash in the middle
resumes, two processes at once seal each once); key rotation."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from tests.harness import Tether, db_rows, set_row
from tether import config
from tether.cli import main
from tether.connectors.fake import FakeConnector
from tether.db import models
from tether.virt.fake import FakeDriver
from tether.volume import secret_box
from tether.volume.repository import VolumeRepository
from tether.volume.secret_box import SecretBox, SecretKeyError, is_sealed
from tether.volume.targets.fake import FakeTarget

CLEAR = "an0lderClear0pw"


def _tether(state: Path, **volume: object) -> Tether:
    return Tether(str(state), FakeTarget(), FakeDriver(), FakeConnector(),
                  overrides={"volume": dict(volume)} if volume else None)


def _stored(t: Tether, vid: str) -> str:
    (row,) = db_rows(t.db, models.Volume, id=vid)
    return str(row.chap_password)


def _exported_password(t: Tether, vid: str) -> str:
    target = t.target
    assert isinstance(target, FakeTarget)
    return target._chap[vid]


def test_a_new_volumes_secret_is_sealed_and_the_target_gets_it_clear(tmp_path: Path) -> None:
    t = _tether(tmp_path)
    try:
        _nova, _cinder, _sid, vid = t.server_with_volume("admin:p1")
        stored = _stored(t, vid)
        assert is_sealed(stored)
        key_file = tmp_path / "secret.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        box = SecretBox(secret_box.parse_keys(key_file.read_text()), "test")
        clear = box.open(stored, vid)
        assert len(clear) == 16 and clear not in stored
        assert _exported_password(t, vid) == clear
    finally:
        t.stop()


def _volume_in_clear(state: Path) -> str:
    """A volume whose secret is in clear, as a Tether before this one kept it."""
    t = _tether(state)
    try:
        vid: str = t.create_volume(t.api())["id"]
        set_row(t.db, models.Volume, vid, chap_password=CLEAR)
    finally:
        t.stop()
    return vid


def test_secrets_left_in_clear_are_sealed_at_start(tmp_path: Path) -> None:
    vid = _volume_in_clear(tmp_path)
    t = _tether(tmp_path)
    try:
        stored = _stored(t, vid)
        assert is_sealed(stored) and CLEAR not in stored
        assert t.embedded.volume.manager.box.open(stored, vid) == CLEAR
        # again: nothing left to do, nothing changed
        secret_box.prepare(t.conf, VolumeRepository(t.db))
        assert _stored(t, vid) == stored
    finally:
        t.stop()


def test_a_crash_in_the_middle_of_sealing_resumes(tmp_path: Path) -> None:
    first, second = _volume_in_clear(tmp_path), _volume_in_clear(tmp_path)
    t = _tether(tmp_path)
    try:
        box = t.embedded.volume.manager.box
        # the state a crash after the first row left: one sealed, one clear
        set_row(t.db, models.Volume, second, chap_password=CLEAR)
        sealed_first = _stored(t, first)
        secret_box.prepare(t.conf, VolumeRepository(t.db))
        assert _stored(t, first) == sealed_first
        assert box.open(_stored(t, second), second) == CLEAR
    finally:
        t.stop()


def test_two_processes_sealing_at_once_seal_each_secret_once(tmp_path: Path) -> None:
    vids = [_volume_in_clear(tmp_path) for _ in range(3)]
    conf = config.load(state_dir=str(tmp_path))
    from tether.service import open_database

    db = open_database(conf, upgrade=False)
    try:
        for vid in vids:
            set_row(db, models.Volume, vid, chap_password=CLEAR)
        boxes: list[SecretBox] = []
        start = threading.Barrier(4)

        def racer() -> None:
            start.wait()
            boxes.append(secret_box.prepare(conf, VolumeRepository(db)))

        threads = [threading.Thread(target=racer) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert len(boxes) == 4
        for vid in vids:
            (row,) = db_rows(db, models.Volume, id=vid)
            assert boxes[0].open(row.chap_password, vid) == CLEAR  # sealed once, not twice
    finally:
        db.dispose()


def test_a_wrong_key_stops_the_volume_service_at_start(tmp_path: Path) -> None:
    _volume_in_clear(tmp_path)
    _tether(tmp_path).stop()  # sealed now
    (tmp_path / "secret.key").write_text(secret_box.new_key() + "\n")
    with pytest.raises(SecretKeyError, match="does not open with the keys of the key file"):
        _tether(tmp_path)


def test_a_missing_key_file_is_not_replaced_by_a_new_one(tmp_path: Path) -> None:
    _volume_in_clear(tmp_path)
    _tether(tmp_path).stop()
    os.unlink(tmp_path / "secret.key")
    with pytest.raises(SecretKeyError, match=r"holds sealed CHAP secrets but .* does not exist"):
        _tether(tmp_path)
    assert not (tmp_path / "secret.key").exists()


def test_a_shared_database_needs_a_configured_key(tmp_path: Path) -> None:
    conf = config.load(state_dir=str(tmp_path), overrides={
        "database": {"connection": "postgresql+psycopg2://tether@db.example/tether"}})
    with pytest.raises(SecretKeyError, match="give every volume service the same key"):
        secret_box.load(conf, holds_sealed=False)
    assert not (tmp_path / "secret.key").exists()
    key = secret_box.new_key()
    conf.set_override("secret_key", key, group="volume")
    box = secret_box.load(conf, holds_sealed=False)
    assert box.open(box.seal("pw"), "v") == "pw"
    assert key not in repr(box)


def test_garbage_instead_of_a_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "secret.key").write_text("not a key\n")
    conf = config.load(state_dir=str(tmp_path))
    with pytest.raises(SecretKeyError, match="not a Fernet key"):
        secret_box.load(conf, holds_sealed=False)


def test_rotate_key_reseals_every_secret_with_a_new_key(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    vid = _volume_in_clear(tmp_path)
    _tether(tmp_path).stop()
    old = (tmp_path / "secret.key").read_text().strip()
    assert main(["--state-dir", str(tmp_path), "secrets", "rotate-key"]) == 0
    assert "1 CHAP secret(s) sealed with it" in capsys.readouterr().out
    new = (tmp_path / "secret.key").read_text().strip()
    assert new != old and len(secret_box.parse_keys(new)) == 1
    assert stat.S_IMODE(os.stat(tmp_path / "secret.key").st_mode) == 0o600
    t = _tether(tmp_path)
    try:
        assert SecretBox([new], "new").open(_stored(t, vid), vid) == CLEAR
        with pytest.raises(SecretKeyError):
            SecretBox([old], "old").open(_stored(t, vid), vid)
    finally:
        t.stop()
