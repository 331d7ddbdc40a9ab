"""How one side of Tether calls the other's REST API: one small interface,
two transports carrying the same requests.

:class:`HttpTransport` is a keep-alive connection pool (the distributed
mode).  :class:`WsgiTransport` calls the other API's WSGI app in this
process (``tether serve``, and the API process calling its sibling API),
with no socket and no HTTP client library -- which cost about as much CPU as
the request's own work.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx


class TransportFailed(Exception):
    """The request never got an answer (connection refused, reset ...)."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class Transport(Protocol):
    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None) -> Reply:
        """``path`` is relative to the endpoint (``/volumes/...``)."""
        ...

    def close(self) -> None: ...


class HttpTransport:
    def __init__(self, endpoint: str, timeout: float) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._http = httpx.Client(timeout=timeout)

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None) -> Reply:
        try:
            resp = self._http.request(method, self.endpoint + path, headers=headers,
                                      content=body)
        except httpx.TransportError as exc:
            raise TransportFailed(f"block storage unreachable at {self.endpoint}: "
                                  f"{exc}") from exc
        return Reply(resp.status_code, resp.content)

    def close(self) -> None:
        self._http.close()


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class WsgiTransport:
    """The request as a WSGI environ, handed to the app in this thread."""

    def __init__(self, app: WsgiApp, endpoint: str) -> None:
        self.app = app
        url = urlsplit(endpoint)
        self.prefix = url.path.rstrip("/")
        self.server = (url.hostname or "localhost", str(url.port or 80))

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None) -> Reply:
        path, _, query = (self.prefix + path).partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method, "SCRIPT_NAME": "", "PATH_INFO": path,
            "QUERY_STRING": query, "SERVER_NAME": self.server[0],
            "SERVER_PORT": self.server[1], "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body or b""), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(body or b"")),
        }
        for name, value in headers.items():
            key = name.upper().replace("-", "_")
            environ[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
        status: list[str] = []

        def start_response(line: str, _headers: Any, _exc_info: Any = None) -> Any:
            status.append(line)
            return lambda _data: None

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return Reply(int(status[-1].split(" ", 1)[0]), content)

    def close(self) -> None:
        pass
