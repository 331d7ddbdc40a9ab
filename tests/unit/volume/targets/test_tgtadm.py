"""tgtd's management protocol: what SocketAdmin puts on the socket (checked
against what tgtadm 1.0.85 sent for the same commands, captured with
strace), how it reads answers and errors, and how AutoAdmin chooses.  A fake
tgtd listens on a unix socket in the test's directory."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from tether.executor import CommandError, CommandResult
from tether.volume.targets.base import TargetError
from tether.volume.targets.tgtadm import (
    AdminError,
    AutoAdmin,
    CommandAdmin,
    Request,
    SocketAdmin,
    codes,
)

NO_LUN = (1 << 64) - 1
HEADER = struct.Struct("<II64sIiQQIIIIII")


def fields(message: bytes) -> tuple[Any, ...]:
    mode, op, lld, length, tid, sid, lun, cid, host, dtype, acdir, pack, force = \
        HEADER.unpack_from(message)
    assert (lld.rstrip(b"\0"), sid, cid, host, dtype, acdir, pack) == (b"iscsi", 0, 0, 0, 0,
                                                                      0, 0)
    assert length == len(message)
    return mode, op, tid, lun, force, message[HEADER.size:]


# (request, (mode, op, tid, lun, force, body)) as tgtadm 1.0.85 sent them
CAPTURED = [
    (Request("new", "target", tid=4100, params=(("targetname", "iqn.2020-01.test:x"),)),
     (1, 0, 4100, NO_LUN, 0, b"targetname=iqn.2020-01.test:x\0")),
    (Request("new", "logicalunit", tid=4100, lun=1,
             params=(("path", "/tmp/tstlu"), ("bstype", "rdwr"))),
     (2, 0, 4100, 1, 0, b"path=/tmp/tstlu,bstype=rdwr\0")),
    (Request("new", "account", params=(("user", "u1"), ("password", "p1"))),
     (7, 0, -1, NO_LUN, 0, b"user=u1,password=p1\0")),
    (Request("bind", "account", tid=4100, params=(("user", "u1"),)),
     (7, 3, 4100, NO_LUN, 0, b"user=u1\0")),
    (Request("bind", "target", tid=4100, params=(("initiator-name", "iqn.x:init"),)),
     (1, 3, 4100, NO_LUN, 0, b"initiator-name=iqn.x:init\0")),
    (Request("unbind", "target", tid=4100, params=(("initiator-name", "iqn.x:init"),)),
     (1, 4, 4100, NO_LUN, 0, b"initiator-name=iqn.x:init\0")),
    (Request("unbind", "account", tid=4100, params=(("user", "u1"),)),
     (7, 4, 4100, NO_LUN, 0, b"user=u1\0")),
    (Request("delete", "logicalunit", tid=4100, lun=1), (2, 1, 4100, 1, 0, b"")),
    (Request("delete", "target", tid=4100, force=True), (1, 1, 4100, NO_LUN, 1, b"")),
    (Request("delete", "account", params=(("user", "u1"),)),
     (7, 1, -1, NO_LUN, 0, b"user=u1\0")),
    (Request("show", "target"), (1, 2, -1, NO_LUN, 0, b"")),
    (Request("show", "system"), (0, 2, -1, NO_LUN, 0, b"")),
]


@pytest.mark.parametrize("req,expected", CAPTURED, ids=lambda v: getattr(v, "op", ""))
def test_requests_are_encoded_as_tgtadm_sends_them(req: Request, expected: tuple[Any, ...]
                                                   ) -> None:
    assert fields(SocketAdmin(path="/nonexistent").encode(req)) == expected


class FakeTgtd:
    """Accepts one request per connection, as tgtd does; answers from a script."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.requests: list[bytes] = []
        self.answers: list[bytes] = []  # raw replies, one per request
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def answer(self, code: int = 0, text: bytes = b"", length: int | None = None) -> None:
        body = text + b"\0" if text else b""
        self.answers.append(struct.pack("<II", code, length or 8 + len(body)) + body)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                length = HEADER.unpack(head)[3]
                rest = conn.recv(length - HEADER.size, socket.MSG_WAITALL) \
                    if length > HEADER.size else b""
                self.requests.append(head + rest)
                if self.answers:
                    conn.sendall(self.answers.pop(0))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tgtd(tmp_path: Any) -> Iterator[FakeTgtd]:
    fake = FakeTgtd(str(tmp_path / "socket.0"))
    try:
        yield fake
    finally:
        fake.close()


def test_show_returns_tgtds_text(tgtd: FakeTgtd) -> None:
    tgtd.answer(text=b"Target 1: iqn.x\n    System information:\n")
    assert SocketAdmin(path=tgtd.path).request(Request("show", "target")) == \
        "Target 1: iqn.x\n    System information:\n"
    assert fields(tgtd.requests[0])[:2] == (1, 2)


def test_refusals_carry_tgtds_code_and_never_the_password(tgtd: FakeTgtd) -> None:
    tgtd.answer(code=14)
    req = Request("new", "account", params=(("user", "u1"), ("password", "s3cret-pw")),
                  secrets=("s3cret-pw",))
    with pytest.raises(AdminError) as err:
        SocketAdmin(path=tgtd.path).request(req)
    assert err.value.code == "account_exists"
    assert "this account already exists" in str(err.value)
    assert "s3cret-pw" not in str(err.value) and "user=u1" in str(err.value)
    assert b"password=s3cret-pw" in tgtd.requests[0]  # tgtd itself gets it


def test_unknown_error_codes_are_reported_not_tolerated(tgtd: FakeTgtd) -> None:
    tgtd.answer(code=99)
    with pytest.raises(AdminError, match="error 99") as err:
        SocketAdmin(path=tgtd.path).request(Request("delete", "target", tid=1))
    assert err.value.code is None


def test_an_answer_cut_short_is_a_target_error(tgtd: FakeTgtd) -> None:
    tgtd.answer(length=400)  # promises 392 bytes of text, sends none, closes
    with pytest.raises(TargetError, match="closed the connection"):
        SocketAdmin(path=tgtd.path).request(Request("show", "target"))


def test_no_tgtd_is_a_target_error(tmp_path: Any) -> None:
    with pytest.raises(TargetError, match="tgtd is not running"):
        SocketAdmin(path=str(tmp_path / "socket.9")).request(Request("show", "system"))


def test_socket_path_follows_the_control_port_and_tgtadms_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TGT_IPC_SOCKET", raising=False)
    assert SocketAdmin(control_port=7).path == "/var/run/tgtd/socket.7"
    monkeypatch.setenv("TGT_IPC_SOCKET", "/run/elsewhere/tgt")
    assert SocketAdmin(control_port=7).path == "/run/elsewhere/tgt.7"


def test_values_tgtd_would_split_are_refused_without_showing_them() -> None:
    with pytest.raises(TargetError) as err:
        Request("new", "account", params=(("user", "u"), ("password", "a,b")))
    assert "a,b" not in str(err.value)
    with pytest.raises(ValueError):
        Request("frobnicate", "target")


def test_codes_are_checked_against_the_table() -> None:
    assert codes("no_target", "acl_exists") == {"no_target", "acl_exists"}
    with pytest.raises(ValueError, match="no_tagret"):
        codes("no_tagret")


class Runner:
    """``tgtadm --version`` says ``version``; other commands are recorded."""

    def __init__(self, version: str = "1.0.85\n", fail: str | None = None) -> None:
        self.version = version
        self.fail = fail
        self.calls: list[list[str]] = []

    def run(self, argv: Sequence[str], *, check: bool = True, secrets: Sequence[str] = (),
            timeout: float | None = 60.0, cwd: str | None = None) -> CommandResult:
        args = list(argv)
        self.calls.append(args)
        if args == ["tgtadm", "--version"]:
            return CommandResult(tuple(args), 0, self.version, "")
        if self.fail:
            raise CommandError(tuple(args), 22, "", f"tgtadm: {self.fail}\n")
        return CommandResult(tuple(args), 0, "from tgtadm\n", "")


def test_auto_uses_the_socket_of_a_known_tgt_that_answers(tgtd: FakeTgtd) -> None:
    runner = Runner()
    admin = AutoAdmin(runner, socket_admin=SocketAdmin(path=tgtd.path))
    tgtd.answer(text=b"System:\n    State: ready\n")  # the probe
    tgtd.answer(text=b"from the socket\n")
    tgtd.answer(text=b"again\n")
    assert admin.request(Request("show", "target")) == "from the socket\n"
    assert admin.request(Request("show", "target")) == "again\n"
    assert runner.calls == [["tgtadm", "--version"]]  # asked once, never forked again
    assert [fields(r)[:2] for r in tgtd.requests] == [(0, 2), (1, 2), (1, 2)]


@pytest.mark.parametrize("version", ["1.0.57\n", "tgtadm version unknown\n"])
def test_auto_uses_tgtadm_for_an_old_or_unknown_tgt(tgtd: FakeTgtd, version: str) -> None:
    runner = Runner(version=version)
    admin = AutoAdmin(runner, socket_admin=SocketAdmin(path=tgtd.path))
    assert admin.request(Request("show", "target")) == "from tgtadm\n"
    assert admin.request(Request("show", "target")) == "from tgtadm\n"
    assert tgtd.requests == []
    assert runner.calls.count(["tgtadm", "--version"]) == 1


def test_auto_decides_again_once_tgtd_is_up(tmp_path: Any) -> None:
    """tgtd not running yet: tgtadm reports the failure (as it would); once
    tgtd answers on its socket, the socket is used."""
    path = str(tmp_path / "socket.0")
    runner = Runner(fail="can't connect to the tgt daemon")
    admin = AutoAdmin(runner, socket_admin=SocketAdmin(path=path))
    with pytest.raises(AdminError, match="can't connect"):
        admin.request(Request("show", "target"))
    fake = FakeTgtd(path)
    try:
        fake.answer(text=b"System:\n")
        fake.answer(text=b"now\n")
        assert admin.request(Request("show", "target")) == "now\n"
    finally:
        fake.close()


def test_auto_keeps_tgtadm_when_the_socket_cannot_be_used(tmp_path: Any) -> None:
    """An error other than "nobody listens" (here ENOTDIR; in the field, tgtd
    admitting only its own user): tgtadm from then on, without trying the
    socket again on every request."""
    (tmp_path / "file").write_text("")
    runner = Runner()
    admin = AutoAdmin(runner, socket_admin=SocketAdmin(path=str(tmp_path / "file" / "s")))
    assert admin.request(Request("show", "target")) == "from tgtadm\n"
    assert admin.chosen is admin.command


def test_auto_falls_back_when_the_socket_speaks_something_else(tgtd: FakeTgtd) -> None:
    tgtd.answer(text=b"garbage")
    admin = AutoAdmin(Runner(), socket_admin=SocketAdmin(path=tgtd.path))
    assert admin.request(Request("show", "target")) == "from tgtadm\n"
    assert admin.chosen is admin.command


def test_command_admin_maps_tgtadms_messages_to_codes() -> None:
    admin = CommandAdmin(Runner(fail="this access control rule does not exist"), 3)
    with pytest.raises(AdminError) as err:
        admin.request(Request("unbind", "target", tid=2,
                              params=(("initiator-name", "iqn.x"),)))
    assert err.value.code == "no_acl"
    assert admin.argv(Request("delete", "target", tid=2, force=True)) == [
        "tgtadm", "-C", "3", "--lld", "iscsi", "--op", "delete", "--force", "--mode",
        "target", "--tid", "2"]


def test_the_socket_file_is_only_a_path(tmp_path: Any) -> None:
    """A path that is not a socket is reported, not crashed on."""
    path = tmp_path / "socket.0"
    path.write_text("")
    with pytest.raises(TargetError, match="cannot reach tgtd"):
        SocketAdmin(path=str(path)).request(Request("show", "system"))
    assert os.path.exists(path)


def test_a_full_backlog_is_waited_for_not_an_error(tmp_path: Any) -> None:
    """tgtd queues few connections; when they are all taken a connect with a
    timeout fails at once (EAGAIN), where tgtadm waits: so does SocketAdmin."""
    path = str(tmp_path / "socket.0")
    busy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    busy.bind(path)
    busy.listen(0)
    fillers = []
    while True:  # take every place in the queue
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(path)
        except BlockingIOError:
            filler.close()
            break
        fillers.append(filler)
    answered = threading.Event()

    def tgtd_catches_up() -> None:
        answered.wait(0.3)  # busy a moment, then it serves the whole queue
        for f in fillers:
            f.close()
        while True:
            try:
                conn, _ = busy.accept()
            except OSError:  # closed: the test is over
                return
            with conn:
                head = conn.recv(HEADER.size, socket.MSG_WAITALL)
                if head:
                    conn.sendall(struct.pack("<II", 0, 8))
                    return

    threading.Thread(target=tgtd_catches_up, daemon=True).start()
    try:
        assert SocketAdmin(path=path, timeout=10).request(Request("show", "system")) == ""
    finally:
        answered.set()
        busy.close()


def test_command_admin_sends_a_password_over_the_socket_never_on_a_command_line(
        tgtd: FakeTgtd) -> None:
    runner = Runner()
    tgtd.answer()
    admin = CommandAdmin(runner, 3, secret_admin=SocketAdmin(path=tgtd.path))
    admin.request(Request("new", "account", params=(("user", "u1"), ("password", "s3cret-pw")),
                          secrets=("s3cret-pw",)))
    assert b"password=s3cret-pw" in tgtd.requests[0]
    assert not [argv for argv in runner.calls if "s3cret-pw" in " ".join(argv)]


def test_command_admin_refuses_a_password_when_the_socket_is_unusable(tmp_path: Any) -> None:
    runner = Runner()
    admin = CommandAdmin(runner, 3, secret_admin=SocketAdmin(path=str(tmp_path / "none")))
    with pytest.raises(TargetError, match="command line") as err:
        admin.request(Request("new", "account", params=(("user", "u1"),
                                                          ("password", "s3cret-pw")),
                              secrets=("s3cret-pw",)))
    assert "s3cret-pw" not in str(err.value)
    assert not [argv for argv in runner.calls if "s3cret-pw" in " ".join(argv)]
