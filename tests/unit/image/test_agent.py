"""The host side of the guest agent against a fake guest on a unix socket:
answers are matched by id, echoes and late answers are skipped."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tether.image.agent import AgentError, GuestAgent

VOL = "0123abcd-0123-4567-89ab-0123456789ab"


class FakeGuest:
    """Listens where QEMU would; ``answer(id, command, args)`` gives the lines
    to send back for each request."""

    def __init__(self, path: str, answer: Callable[[str, str, list[str]], list[str]]) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    ident, command, *args = line.decode().split()
                    for out in self.answer(ident, command, args):
                        conn.sendall(out.encode() + b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "agent.sock")


def test_answers_are_matched_by_id(path: str) -> None:
    def answer(ident: str, command: str, args: list[str]) -> list[str]:
        # the tty's echo, a stale answer, then the real one
        return [f"{ident} {command} {' '.join(args)}", "0 ok stale",
                f"{ident} ok {'pong' if command == 'ping' else 'abc'}"]

    guest = FakeGuest(path, answer)
    with GuestAgent(path) as agent:
        assert agent.call("ping") == "pong"
        assert agent.write_random(VOL, 64) == "abc"
    guest.close()


def test_error_answer_raises(path: str) -> None:
    guest = FakeGuest(path, lambda i, c, a: [f"{i} err no disk with a serial matching x"])
    with GuestAgent(path) as agent, pytest.raises(AgentError, match="no disk"):
        agent.read_sha256("x", 1)
    guest.close()


def test_no_answer_times_out(path: str) -> None:
    guest = FakeGuest(path, lambda i, c, a: [])
    with GuestAgent(path) as agent, pytest.raises(AgentError, match="no answer to ping"):
        agent.call("ping", timeout=0.2)
    guest.close()


def test_wait_ready_polls_until_the_socket_answers(path: str) -> None:
    started = threading.Event()
    guests: list[FakeGuest] = []

    def later() -> None:
        started.wait()
        guests.append(FakeGuest(path, lambda i, c, a: [f"{i} ok pong"]))

    starter = threading.Thread(target=later, daemon=True)
    starter.start()
    with GuestAgent(path) as agent:
        with pytest.raises(AgentError, match="not ready"):
            agent.wait_ready(timeout=0.1)  # nothing listens yet
        started.set()
        assert agent.wait_ready(timeout=10) >= 0
    starter.join(timeout=10)
    guests[0].close()


def test_disks_and_truncated_virtio_blk_serials(path: str) -> None:
    seen = iter([f"sda={VOL} vdb={VOL[:20]}", f"vdb={VOL[:20]}", ""])

    def answer(ident: str, command: str, args: list[str]) -> list[str]:
        return [f"{ident} ok {next(seen)}"]

    guest = FakeGuest(path, answer)
    with GuestAgent(path) as agent:
        assert agent.disks() == {"sda": VOL, "vdb": VOL[:20]}
        assert agent.disk_of(VOL) == "vdb"  # only vdb left, matched by its 20 chars
        agent.wait_disk_gone(VOL, timeout=5)
    guest.close()
