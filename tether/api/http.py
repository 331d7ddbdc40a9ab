"""The HTTP server under the APIs (waitress), made to refuse what the apps
never see in OpenStack's shape too.

Waitress reads a whole request body before it calls the app, so the body
limit must be its own: ``max_request_body_size`` makes it refuse a larger
``Content-Length`` before reading anything, and a chunked body as soon as
it has read one byte more than the limit.  Its own error answers are plain
text; :class:`JsonErrorChannel` answers them (413, a malformed request's
400, 431, 501) with the JSON fault body every other error has."""

from __future__ import annotations

import json
from typing import Any

from waitress.channel import HTTPChannel
from waitress.server import create_server
from waitress.task import ErrorTask

from tether.api.errors import fault_body
from tether.api.validation import too_large


class JsonErrorTask(ErrorTask):  # type: ignore[misc]
    def execute(self) -> None:
        error = self.request.error
        if error.code == 413:
            message = too_large(self.channel.server.adj.max_request_body_size - 1).message
        else:
            message = f"{error.reason}: {error.body}"
        body = json.dumps(fault_body(error.code, message)).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class JsonErrorChannel(HTTPChannel):  # type: ignore[misc]
    error_task_class = JsonErrorTask


def create(app: Any, host: str, port: int, threads: int, max_body: int) -> Any:
    """A waitress server for ``app`` that reads at most ``max_body`` + 1
    bytes of a body and answers its own errors in JSON."""
    server = create_server(app, host=host, port=port, threads=threads, ident="tether",
                           clear_untrusted_proxy_headers=True,
                           max_request_body_size=max_body + 1)
    server.channel_class = JsonErrorChannel  # waitress has no argument for it
    return server
