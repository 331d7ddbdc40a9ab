"""Block storage's question to compute (CVE-2023-2088): does the server still
use this attachment?  Against a scripted transport: each path's answer."""

from __future__ import annotations

import json

import pytest

from tether.exceptions import BackendError
from tether.identity.credentials import StaticToken
from tether.restclient import Reply, TransportFailed
from tether.volume.compute_client import ComputeClient

S, V, A = "s1", "v1", "a1"
SERVER = f"/servers/{S}"
BDM = f"/servers/{S}/os-volume_attachments/{V}"


class Scripted:
    def __init__(self, answers: dict[str, tuple[int, object] | Exception]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    def request(self, method: str, path: str, headers: dict[str, str],
                body: bytes | None) -> Reply:
        self.asked.append(path)
        answer = self.answers[path]
        if isinstance(answer, Exception):
            raise answer
        status, payload = answer
        return Reply(status, json.dumps(payload).encode())

    def close(self) -> None:
        pass


def _server(task: str | None = None) -> tuple[int, object]:
    return 200, {"server": {"id": S, "OS-EXT-STS:task_state": task}}


def _bdm(attachment: str | None = A) -> tuple[int, object]:
    return 200, {"volumeAttachment": {"volumeId": V, "attachment_id": attachment}}


@pytest.mark.parametrize(("answers", "in_use"), [
    ({SERVER: _server(), BDM: _bdm()}, True),
    ({SERVER: _server(), BDM: _bdm(None)}, True),          # before 2.89: cannot tell: in use
    ({SERVER: (404, {})}, False),                           # no such server
    ({SERVER: _server("deleting")}, False),                 # being deleted
    ({SERVER: _server(), BDM: (404, {})}, False),           # not attached (any more)
    ({SERVER: _server(), BDM: _bdm("other")}, False),       # another attachment of it
    ({SERVER: (503, {})}, True),                            # compute failing: refuse
    ({SERVER: TransportFailed("down")}, True),              # compute unreachable: refuse
    ({SERVER: _server(), BDM: (500, {})}, True),
])
def test_server_uses_volume(answers: dict[str, tuple[int, object] | Exception],
                            in_use: bool) -> None:
    client = ComputeClient(Scripted(answers), StaticToken("svc"))
    assert client.server_uses_volume(S, V, A) is in_use


def test_compute_refusing_the_service_is_an_error() -> None:
    client = ComputeClient(Scripted({SERVER: (403, {})}), StaticToken("svc"))
    with pytest.raises(BackendError, match="refused to say"):
        client.server_uses_volume(S, V, A)
