"""The host side of the tiny image's guest agent (``tiny_init.sh``).

The guest's second serial port is a unix socket on the host
(``<instances_dir>/<server>/agent.sock``).  A request is one line
``<id> <command> [args]``; the answer is ``<id> ok <result>`` or
``<id> err <message>``.  Lines with another id (answers to a request that
timed out, a line the guest's tty echoed before the agent set it raw) are
skipped, so a request can always be retried.  Every wait here polls with a
deadline; nothing sleeps for a state.
"""

from __future__ import annotations

import itertools
import socket
import time
from types import TracebackType


class AgentError(Exception):
    """The agent answered ``err``, or did not answer in time."""


class GuestAgent:
    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self._sock: socket.socket | None = None
        self._buf = b""
        self._ids = itertools.count(1)

    def __enter__(self) -> GuestAgent:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- transport -------------------------------------------------------------------

    def _connected(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            self._sock, self._buf = sock, b""
        return self._sock

    def call(self, command: str, *args: str, timeout: float = 60.0) -> str:
        """Send one request; its result, or AgentError."""
        ident = str(next(self._ids))
        sock = self._connected()
        sock.sendall(" ".join((ident, command, *args)).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AgentError(f"guest agent on {self.socket_path}: no answer to "
                                     f"{command} within {timeout:g}s")
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    self.close()
                    raise AgentError(f"guest agent on {self.socket_path} hung up")
                self._buf += chunk
            line, self._buf = self._buf.split(b"\n", 1)
            words = line.decode(errors="replace").strip().split(" ", 2)
            if len(words) >= 2 and words[0] == ident and words[1] in ("ok", "err"):
                result = words[2] if len(words) == 3 else ""
                if words[1] == "err":
                    raise AgentError(f"guest agent: {command} failed: {result}")
                return result

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Poll until the agent answers a ping; seconds it took."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            try:
                self.call("ping", timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
                return time.monotonic() - started
            except (OSError, AgentError):
                self.close()
                if time.monotonic() > deadline:
                    raise AgentError(f"guest agent on {self.socket_path} not ready after "
                                     f"{timeout:g}s") from None
                time.sleep(0.05)  # the socket may not exist yet: poll again

    # -- disks and data --------------------------------------------------------------

    def disks(self) -> dict[str, str]:
        """Every sdX / vdX disk the guest sees, with its serial."""
        out = {}
        for item in self.call("disks").split():
            name, _, serial = item.partition("=")
            out[name] = serial
        return out

    def disk_of(self, volume_id: str) -> str | None:
        """The guest's name of the volume's disk (virtio-blk truncates serials)."""
        for name, serial in self.disks().items():
            if serial and volume_id.startswith(serial):
                return name
        return None

    def wait_disk(self, volume_id: str, timeout: float = 30.0) -> str:
        """Poll until the guest sees the volume's disk; its name."""
        deadline = time.monotonic() + timeout
        while (name := self.disk_of(volume_id)) is None:
            if time.monotonic() > deadline:
                raise AgentError(f"the guest sees no disk of volume {volume_id} after "
                                 f"{timeout:g}s")
            time.sleep(0.05)
        return name

    def wait_disk_gone(self, volume_id: str, timeout: float = 30.0) -> None:
        """Poll until the guest no longer sees the volume's disk."""
        deadline = time.monotonic() + timeout
        while self.disk_of(volume_id) is not None:
            if time.monotonic() > deadline:
                raise AgentError(f"the guest still sees volume {volume_id} after "
                                 f"{timeout:g}s")
            time.sleep(0.05)

    def write_random(self, volume_id: str, mib: int, timeout: float = 300.0) -> str:
        """Write ``mib`` MiB of fresh random data at the start of the volume
        (O_DIRECT, then fsync); the sha256 of the data written."""
        return self.call("write", volume_id, str(int(mib)), timeout=timeout)

    def read_sha256(self, volume_id: str, mib: int, timeout: float = 300.0) -> str:
        """sha256 of the volume's first ``mib`` MiB, read with O_DIRECT."""
        return self.call("read", volume_id, str(int(mib)), timeout=timeout)
