"""How Tether talks to tgtd: over its management socket, or through tgtadm.

``tgtadm`` is a thin client.  Each command becomes one request on tgtd's
unix socket (``/var/run/tgtd/socket.<control port>``): a fixed 120-byte
header (mode, operation, driver name, total length, target id, LUN, a force
flag ...) followed by the parameters as ``key=value,key=value`` text; tgtd
answers with an 8-byte header (error code, total length) and, for ``show``,
text.  That format has not changed since tgt 1.0.58 (2015; Debian 12 ships
1.0.85, the newest release is 1.0.97).

Forking tgtadm costs the calling process 0.2-0.8 ms of CPU and about 0.8 ms
of wall time per command, and an export is five commands; one request on the
socket costs 0.02 ms and 0.03 ms.  So :class:`SocketAdmin` speaks the
protocol itself, :class:`CommandAdmin` runs tgtadm, and :class:`AutoAdmin`
(``[volume] tgt_admin = auto``, the default) uses the socket when the
installed tgt is a version whose format is known (checked once with
``tgtadm --version``) and tgtd answers a ``show system`` request on it,
tgtadm otherwise.

Errors carry tgtd's error as a code (:class:`AdminError`), whichever way the
request went, so callers can tell "already exists" from a real failure.  A
CHAP password goes to tgtd in the request body, never on a command line
(``/proc/<pid>/cmdline`` is readable by every local user): tgtadm takes it
only as ``--password``, so :class:`CommandAdmin` sends a request that
carries a secret over the socket itself, and refuses it when the socket is
not reachable rather than run tgtadm with it.  Never in a log line or an
error message either.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from tether.executor import CommandError, Runner
from tether.volume.targets.base import TargetError

LOG = logging.getLogger(__name__)

SOCKET_DIR = "/var/run/tgtd"
FIRST_KNOWN_VERSION = (1, 0, 58)
"""The oldest tgt whose management socket Tether speaks: the request header,
operation and mode numbers and error codes below are those of tgt 1.0.58 up
to at least 1.0.97.  Older ones use tgtadm."""

_OPS = {"new": 0, "delete": 1, "show": 2, "bind": 3, "unbind": 4, "update": 5}
_MODES = {"system": 0, "target": 1, "logicalunit": 2, "portal": 3, "lld": 4,
          "session": 5, "connection": 6, "account": 7}
# tgtd's error codes, in its numbering, with what tgtadm prints for them
ERRORS: dict[int, tuple[str, str]] = {
    1: ("unknown", "unknown error"),
    2: ("no_memory", "out of memory"),
    3: ("no_driver", "can't find the driver"),
    4: ("no_target", "can't find the target"),
    5: ("no_lun", "can't find the logical unit"),
    6: ("no_session", "can't find the session"),
    7: ("no_connection", "can't find the connection"),
    8: ("no_binding", "can't find the binding"),
    9: ("target_exists", "this target already exists"),
    10: ("lun_exists", "this logical unit number already exists"),
    11: ("binding_exists", "this binding already exists"),
    12: ("acl_exists", "this access control rule already exists"),
    13: ("no_acl", "this access control rule does not exist"),
    14: ("account_exists", "this account already exists"),
    15: ("no_account", "can't find the account"),
    16: ("too_many_accounts", "too many accounts"),
    17: ("invalid_request", "invalid request"),
    18: ("outgoing_account_exists", "this target already has an outgoing account"),
    19: ("target_active", "this target is still active"),
    20: ("lun_active", "this logical unit is still active"),
    21: ("driver_active", "this driver is busy"),
    22: ("unsupported", "this operation isn't supported"),
    23: ("unknown_parameter", "unknown parameter"),
    24: ("removal_prevented", "this device has Prevent Removal set"),
}
_CODE_OF_MESSAGE = {message: code for code, message in ERRORS.values()}

# the command-line option of each request parameter
_OPTIONS = {"targetname": "--targetname", "path": "--backing-store", "bstype": "--bstype",
            "user": "--user", "password": "--password",
            "initiator-name": "--initiator-name", "initiator-address": "--initiator-address"}

_HEADER = struct.Struct("<II64sIiQQIIIIII")  # struct tgtadm_req, 120 bytes
_REPLY = struct.Struct("<II")  # struct tgtadm_rsp: error code, total length
_ANY = -1  # "no target id" / all LUN bits set: "no LUN"
_NO_LUN = (1 << 64) - 1


@dataclass(frozen=True)
class Request:
    """One tgtadm command: ``--op <op> --mode <mode> [--tid] [--lun] ...``."""

    op: str
    mode: str
    tid: int | None = None
    lun: int | None = None
    force: bool = False
    params: tuple[tuple[str, str], ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if self.op not in _OPS or self.mode not in _MODES:
            raise ValueError(f"unknown tgt request {self.op}/{self.mode}")
        for key, value in self.params:
            if key not in _OPTIONS or "," in value or "\0" in value:
                # tgtd splits the parameters at commas
                raise TargetError(f"cannot pass {key} to tgtd: unsupported name or value")

    def describe(self) -> str:
        """For messages: the request with its secrets masked."""
        shown = [f"{k}={'***' if v in self.secrets else v}" for k, v in self.params]
        where = [f"tid {self.tid}"] if self.tid is not None else []
        where += [f"lun {self.lun}"] if self.lun is not None else []
        return " ".join([self.op, self.mode, *where, *shown])


class AdminError(TargetError):
    """tgtd refused a request; ``code`` is its error (``ERRORS``' names),
    ``None`` when it could not be told."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class TgtdNotRunning(TargetError):
    """Nothing listens on tgtd's socket (yet)."""


class TgtAdmin(Protocol):
    def request(self, req: Request) -> str:
        """Run ``req``; what tgtd answered (text for ``show``, else empty).
        Raises :class:`AdminError` when tgtd refuses, :class:`TargetError`
        when it cannot be reached."""
        ...


class CommandAdmin:
    """Runs ``tgtadm`` for each request, except one carrying a secret (a CHAP
    password): that one goes over tgtd's socket (``secret_admin``)."""

    def __init__(self, runner: Runner, control_port: int = 0,
                 secret_admin: TgtAdmin | None = None) -> None:
        self.runner = runner
        self.control_port = control_port
        self.secret_admin: TgtAdmin = secret_admin or SocketAdmin(control_port)

    def argv(self, req: Request) -> list[str]:
        argv = ["tgtadm", "-C", str(self.control_port), "--lld", "iscsi", "--op", req.op]
        if req.force:
            argv.append("--force")
        argv += ["--mode", req.mode]
        if req.tid is not None:
            argv += ["--tid", str(req.tid)]
        if req.lun is not None:
            argv += ["--lun", str(req.lun)]
        for key, value in req.params:
            argv += [_OPTIONS[key], value]
        return argv

    def request(self, req: Request) -> str:
        if req.secrets:
            return self._by_socket(req)
        try:
            return self.runner.run(self.argv(req)).stdout
        except CommandError as exc:
            said = exc.stderr.strip().removeprefix("tgtadm:").strip()
            raise AdminError(f"tgtadm failed: {exc}", _CODE_OF_MESSAGE.get(said)) from None
        except OSError as exc:
            raise TargetError(f"cannot run tgtadm: {exc}") from None


    def _by_socket(self, req: Request) -> str:
        try:
            return self.secret_admin.request(req)
        except AdminError:
            raise
        except TargetError as exc:
            raise TargetError(f"cannot {req.describe()}: tgtadm would show the password to "
                              f"every local user on its command line, and tgtd's socket is not "
                              f"usable ({exc})") from None


class SocketAdmin:
    """Sends each request to tgtd's management socket, as tgtadm does."""

    def __init__(self, control_port: int = 0, timeout: float = 60.0,
                 path: str | None = None) -> None:
        # tgtadm's own override of the socket's location
        base = os.environ.get("TGT_IPC_SOCKET", os.path.join(SOCKET_DIR, "socket"))
        self.path = path or f"{base}.{control_port}"
        self.timeout = timeout

    def encode(self, req: Request) -> bytes:
        body = ",".join(f"{k}={v}" for k, v in req.params).encode()
        body = body + b"\0" if body else b""
        header = _HEADER.pack(
            _MODES[req.mode], _OPS[req.op], b"iscsi", _HEADER.size + len(body),
            _ANY if req.tid is None else req.tid, 0,
            _NO_LUN if req.lun is None else req.lun,
            0, 0, 0, 0, 0, int(req.force))
        return header + body

    def _connect(self, sock: socket.socket) -> None:
        """Connect, waiting while tgtd's backlog (32) is full: a socket with a
        timeout connects without blocking and fails at once with EAGAIN then,
        where tgtadm (blocking) waits its turn."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                sock.connect(self.path)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def request(self, req: Request) -> str:
        message = self.encode(req)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                self._connect(sock)
                sock.sendall(message)
                head = _recv_exactly(sock, _REPLY.size)
                code, length = _REPLY.unpack(head)
                if code:
                    name, said = ERRORS.get(code, (None, f"error {code}"))
                    raise AdminError(f"tgtd refused {req.describe()}: {said}", name)
                text = _recv_exactly(sock, length - _REPLY.size) if length > _REPLY.size else b""
        except AdminError:
            raise
        except (FileNotFoundError, ConnectionRefusedError):
            raise TgtdNotRunning(f"cannot reach tgtd at {self.path}: tgtd is not running"
                                 ) from None
        except (OSError, EOFError) as exc:
            raise TargetError(f"cannot reach tgtd at {self.path}: {_why(exc)}") from None
        return text.rstrip(b"\0").decode(errors="replace")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError("tgtd closed the connection mid-answer")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _why(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in m.groups()) if m else None


SHOW_SYSTEM = Request("show", "system")


class AutoAdmin:
    """The socket where the installed tgt is known to speak its format and
    tgtd answers on it; tgtadm otherwise.  Decided on first use (tgtd may
    start after Tether) and then kept."""

    def __init__(self, runner: Runner, control_port: int = 0,
                 socket_admin: SocketAdmin | None = None) -> None:
        self.socket = socket_admin or SocketAdmin(control_port)
        self.command = CommandAdmin(runner, control_port, self.socket)
        self.chosen: TgtAdmin | None = None
        self._lock = threading.Lock()

    def request(self, req: Request) -> str:
        return (self.chosen or self._choose()).request(req)

    def _choose(self) -> TgtAdmin:
        with self._lock:
            if self.chosen is not None:
                return self.chosen
            try:
                said = self.command.runner.run(["tgtadm", "--version"]).stdout
            except (CommandError, OSError) as exc:
                LOG.warning("tgtadm --version failed (%s): using tgtadm", exc)
                self.chosen = self.command
                return self.chosen
            version = parse_version(said)
            if version is None or version < FIRST_KNOWN_VERSION:
                LOG.info("tgt %s: driving tgtd through tgtadm", said.strip() or "?")
                self.chosen = self.command
                return self.chosen
            try:
                answer = self.socket.request(SHOW_SYSTEM)
            except TgtdNotRunning as exc:
                # tgtd not up yet: this request goes through tgtadm (which
                # reports it properly); the choice is made again next time
                LOG.debug("%s", exc)
                return self.command
            except TargetError as exc:  # e.g. not allowed to connect
                LOG.warning("tgtd's socket at %s refused us (%s): using tgtadm",
                            self.socket.path, exc)
                self.chosen = self.command
                return self.chosen
            if not answer.startswith("System:"):
                LOG.warning("tgtd's socket at %s answered show-system with %r: using tgtadm",
                            self.socket.path, answer[:40])
                self.chosen = self.command
            else:
                LOG.info("tgt %s: driving tgtd through its socket %s",
                         ".".join(map(str, version)), self.socket.path)
                self.chosen = self.socket
            return self.chosen


def make_admin(how: str, runner: Runner, control_port: int = 0) -> TgtAdmin:
    """``[volume] tgt_admin``: ``auto``, ``socket`` or ``tgtadm``."""
    if how == "socket":
        return SocketAdmin(control_port)
    if how == "tgtadm":
        return CommandAdmin(runner, control_port)
    if how == "auto":
        return AutoAdmin(runner, control_port)
    raise ValueError(f"unknown tgt_admin {how!r}")


def codes(*names: str) -> frozenset[str]:
    """Error codes by name, checked against the table (a typo must not turn
    into an error that is silently tolerated or never)."""
    known = {name for name, _ in ERRORS.values()}
    unknown = set(names) - known
    if unknown:
        raise ValueError(f"unknown tgtd error codes {sorted(unknown)}")
    return frozenset(names)

