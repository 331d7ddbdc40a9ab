"""Local users and files at rest (docs/security.md): a real ``tether serve``
on the real daemons, with ``[DEFAULT] debug = true`` and the tgtadm command
(not tgtd's socket), does a real attach; then every file and folder under
its state dir has a mode the table allows, and the volume's CHAP password
is nowhere a local user or a stolen database could read it: not in the
database's bytes (main file and WAL), the log, any tgtadm command line, nor
readable from libvirt's secret.  A notification listener on the bus does
the same for notifications (in process: the serve's bus is its own)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import sqlite3
import stat
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests.harness import notifications, wait_for
from tests.integration import serve as serve_mod
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve
from tests.integration.stack import real_tether, server
from tether.volume.secret_box import is_sealed

TOKEN = "admin:admin"

# what may be under the state dir after real work, and how open it may be at
# most; anything not in this table fails the test (a new file must be added
# here, with its reason, in docs/security.md's table)
ALLOWED: list[tuple[str, int]] = [
    ("", 0o711),  # QEMU passes through to instances/
    ("tether.db", 0o600), ("tether.db-wal", 0o600), ("tether.db-shm", 0o600),
    ("tether.db-journal", 0o600),
    ("tether.log", 0o600), ("service_token", 0o600), ("secret.key", 0o600),
    ("initiator_iqn", 0o600), ("service_password", 0o600), ("token.key", 0o600),
    ("admin-password", 0o600),
    ("volumes", 0o700), ("volumes/volume-*", 0o600),
    ("locks", 0o700), ("locks/*", 0o600),
    ("instances", 0o711), ("instances/*", 0o711), ("instances/*/*", 0o600),
    ("images", 0o711), ("images/*", 0o644),
    ("cache", 0o700),
]
TESTS_OWN = {"tether.conf", "serve.out"}  # written by this test, not by Tether


def _allowed(rel: str) -> int | None:
    for pattern, mode in ALLOWED:
        if rel == pattern or (pattern and fnmatch.fnmatchcase(rel, pattern)
                              and rel.count("/") == pattern.count("/")):
            return mode
    return None


def modes_beyond_the_table(state_dir: str) -> list[str]:
    bad = []
    for root, dirs, files in os.walk(state_dir):
        for name in ["", *dirs, *files] if root == state_dir else [*dirs, *files]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, state_dir) if name else ""
            if rel in TESTS_OWN or rel.startswith("cache/"):
                continue
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            allowed = _allowed(rel)
            if allowed is None:
                bad.append(f"{rel or '.'} ({mode:04o}) is not in the table")
            elif mode & ~allowed:
                bad.append(f"{rel or '.'} is {mode:04o}, more open than {allowed:04o}")
    return bad


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A ``tgtadm`` first on PATH that writes its argv to a file, then runs the
    real one: (its folder, the file)."""
    real = shutil.which("tgtadm")
    assert real, "tgtadm is needed"
    folder = str(tmp_path_factory.mktemp("argv"))
    log = os.path.join(folder, "argv.log")
    script = os.path.join(folder, "tgtadm")
    with open(script, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {log}\nexec {real} "$@"\n')
    os.chmod(script, 0o755)
    yield folder, log


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd, libvirtd: None,
          recorder: tuple[str, str]) -> Iterator[Serve]:
    state = str(tmp_path_factory.mktemp("files"))
    os.chmod(state, 0o755)  # an older installation's: tightened at start
    s = serve_mod.write_config(state, tgtd, extra="[DEFAULT]\ndebug = true\n"
                                                  "[volume]\ntgt_admin = tgtadm\n")
    serve_mod.start(s, env={"PATH": f"{recorder[0]}:{os.environ['PATH']}"})
    try:
        yield s
    finally:
        try:
            s.delete_servers(TOKEN)
            s.delete_volumes(TOKEN)
        finally:
            serve_mod.stop(s)


def _attached(s: Serve) -> tuple[str, str, str]:
    """A new server with a new volume attached: (server, volume, CHAP password)."""
    sid = s.create_server(TOKEN, f"files-{uuid.uuid4().hex[:6]}")
    with s.http(TOKEN) as c:
        res = c.post(f"{s.volume_url}/volumes", json={"volume": {"size": 1}})
        assert res.status_code == 202, res.text
        vid = res.json()["volume"]["id"]
        s.wait_volume(TOKEN, vid, "available")
        res = c.post(f"{s.compute_url}/servers/{sid}/os-volume_attachments",
                     json={"volumeAttachment": {"volumeId": vid}})
        assert res.status_code == 200, res.text
        s.wait_volume(TOKEN, vid, "in-use")
        (att,) = c.get(f"{s.volume_url}/attachments?volume_id={vid}").json()["attachments"]
        info = c.get(f"{s.volume_url}/attachments/{att['id']}").json()["attachment"][
            "connection_info"]
    password: str = info["auth_password"]  # the admin sees it, as in Cinder
    assert len(password) == 16
    return sid, vid, password


def _bytes_of(paths: list[str]) -> bytes:
    out = b""
    for p in paths:
        if os.path.exists(p):
            with open(p, "rb") as f:
                out += f.read()
    return out


def test_modes_and_the_chap_secret_after_a_real_attach(serve: Serve,
                                                       recorder: tuple[str, str]) -> None:
    sid, vid, password = _attached(serve)
    state = serve.state_dir

    assert modes_beyond_the_table(state) == []
    for name in ("tether.db", "tether.db-wal", "tether.db-shm", "tether.log", "secret.key",
                 "service_token"):
        assert stat.S_IMODE(os.stat(os.path.join(state, name)).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o711  # was 0755
    with open(os.path.join(state, "tether.log")) as f:
        log = f.read()
    assert f"{state} was mode 0755, more open than 0711: tightened to 0711" in log
    assert " DEBUG " in log  # debug logging was on

    # the secret at rest: sealed in the database, in clear in none of its files
    db = [os.path.join(state, f"tether.db{s}") for s in ("", "-wal", "-shm")]
    raw = _bytes_of(db)
    assert password.encode() not in raw
    assert b"fernet:" in raw
    with contextlib.closing(sqlite3.connect(f"file:{db[0]}?mode=ro", uri=True)) as conn:
        (stored,) = conn.execute("SELECT chap_password FROM volumes WHERE id = ?",
                                 (vid,)).fetchone()
    assert is_sealed(stored)
    # ... nor in the log (debug), nor in what the process printed
    assert password not in log
    assert password.encode() not in _bytes_of([os.path.join(state, "serve.out")])
    # ... nor on any command line: tgtadm ran (the fallback), but the account
    # and its password went over tgtd's socket
    with open(recorder[1]) as f:
        argv = f.read()
    assert "--mode target" in argv and "--mode logicalunit" in argv
    assert password not in argv and "--password" not in argv

    # libvirt's secret holding it for QEMU is private: not readable back
    listed = subprocess.run(["virsh", "-c", "qemu:///system", "secret-list"],
                            capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in listed.splitlines() if f"{serve.prefix}volume-{vid}" in ln]
    secret_uuid = line.split()[0]
    got = subprocess.run(["virsh", "-c", "qemu:///system", "secret-get-value", secret_uuid],
                         capture_output=True, text=True, check=False)
    assert got.returncode != 0 and password not in got.stdout
    dumped = subprocess.run(["virsh", "-c", "qemu:///system", "secret-dumpxml", secret_uuid],
                            capture_output=True, text=True, check=True).stdout
    assert "private='yes'" in dumped and password not in dumped
    # (the compute side's block device mapping keeps no password either)
    with serve.http(TOKEN) as c:
        assert c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}"
                        ).status_code == 202
    serve.wait_volume(TOKEN, vid, "available")
    assert modes_beyond_the_table(state) == []


def test_no_chap_secret_in_notifications_or_debug_logs(
        tmp_path: pytest.TempPathFactory, tgtd: Tgtd, libvirtd: None,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    with real_tether(str(tmp_path), tgtd, {
            "DEFAULT": {"debug": True},
            "oslo_messaging_notifications": {"driver": ["messagingv2"]}}) as t, \
            notifications(t.conf) as got:
        nova = t.nova("admin:p1")
        sid = server(t, nova)
        vid = t.create_volume(t.api("admin:p1"))["id"]
        res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                        {"volumeAttachment": {"volumeId": vid}})
        assert res.status_code == 200, res.text
        t.wait_action(nova, sid, "attach_volume")
        (att,) = t.api("admin:p1").get(f"/v3/attachments?volume_id={vid}").json[
            "attachments"]
        info = t.api("admin:p1").get(f"/v3/attachments/{att['id']}").json["attachment"][
            "connection_info"]
        password = info["auth_password"]
        assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
                           ).status_code == 202
        t.wait_action(nova, sid, "detach_volume")
        seen = []
        wait_for(lambda: (seen.extend(_drain(got)) or
                          {"volume.attach.end", "volume.detach.end"}
                          <= {e for _, e, _ in seen}), 30, "attach and detach notified")
    assert seen and password not in repr(seen)
    assert caplog.records and password not in caplog.text


def _drain(got: object) -> list[tuple[str, str, dict[str, object]]]:
    import queue

    assert isinstance(got, queue.Queue)
    out = []
    while True:
        try:
            out.append(got.get_nowait())
        except queue.Empty:
            return out
