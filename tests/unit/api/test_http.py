"""The HTTP server under the APIs (waitress, configured by tether.api.http)
refuses a body over the limit in JSON, before reading it (Content-Length)
or after limit + 1 bytes (chunked) -- never buffering a huge body first.
This is also the contract test for the waitress internals it relies on
(``channel_class``, ``ErrorTask``)."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tether.service import HttpServer, serve_http

LIMIT = 1000


class _App:
    """Counts the requests that reach it and the bytes it was given."""

    def __init__(self) -> None:
        self.calls = 0
        self.read = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        self.calls += 1
        self.read += len(environ["wsgi.input"].read())
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]


@pytest.fixture
def served() -> Iterator[tuple[HttpServer, _App]]:
    app = _App()
    server = serve_http("test", app, "127.0.0.1", 0, 2, LIMIT)  # type: ignore[arg-type]
    try:
        yield server, app
    finally:
        server.stop()


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:length]


def _connect(server: HttpServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    return sock


def _is_json_413(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413
    assert headers["content-type"] == "application/json"
    fault = json.loads(body)["overLimit"]
    assert fault["code"] == 413 and str(LIMIT) in fault["message"]


def test_a_huge_content_length_is_refused_before_any_body(
        served: tuple[HttpServer, _App]) -> None:
    server, app = served
    with _connect(server) as sock:
        sock.sendall(b"POST /v3/volumes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 1073741824\r\n\r\n")
        _is_json_413(*_response(sock))
    assert app.calls == 0


def test_a_chunked_body_over_the_limit_is_a_json_413(
        served: tuple[HttpServer, _App]) -> None:
    server, app = served
    body = b"x" * (2 * LIMIT)
    with _connect(server) as sock:
        sock.sendall(b"POST /v3/volumes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        _is_json_413(*_response(sock))
    assert app.calls == 0


def test_a_chunked_body_is_not_read_past_the_limit(served: tuple[HttpServer, _App]) -> None:
    """The client keeps sending 64 MiB; the server stops reading and closes
    long before (the client's sends fail), and the app never sees it."""
    server, app = served
    total, chunk = 64 << 20, b"x" * 65536
    sent = 0
    with _connect(server) as sock:
        sock.sendall(b"POST /v3/volumes HTTP/1.1\r\nHost: x\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(OSError):  # the server closed: what we want
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
    assert sent < total
    assert app.calls == 0


@pytest.mark.parametrize("size", [LIMIT, 0])
def test_a_body_within_the_limit_reaches_the_app(served: tuple[HttpServer, _App],
                                                 size: int) -> None:
    server, app = served
    with _connect(server) as sock:
        sock.sendall(b"POST /v3/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                     % (size, b" " * size))
        status, _, _ = _response(sock)
    assert status == 200
    assert (app.calls, app.read) == (1, size)


def test_waitress_own_errors_are_json(served: tuple[HttpServer, _App]) -> None:
    server, app = served
    with _connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"zz\r\n")
        status, headers, body = _response(sock)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["badRequest"]["code"] == 400
    assert app.calls == 0
