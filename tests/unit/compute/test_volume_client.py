"""The compute side's block-storage client, over both transports: a real
HTTP server (waitress on a free port) and the in-process WSGI call."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from waitress.server import create_server

from tether.compute.volume_client import VolumeClient
from tether.exceptions import BackendError, Conflict, InvalidVolume, VolumeNotFound
from tether.identity.credentials import StaticToken
from tether.restclient import HttpTransport, Transport, WsgiTransport
from tether.service import HttpServer

SEEN: list[dict[str, Any]] = []


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Echoes what it got; the path picks the answer."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    SEEN.append({"method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
                 "query": environ["QUERY_STRING"], "body": body,
                 "token": environ.get("HTTP_X_AUTH_TOKEN"),
                 "version": environ.get("HTTP_OPENSTACK_API_VERSION"),
                 "type": environ.get("CONTENT_TYPE")})
    status, reply = {
        "/v3/volumes/missing": ("404 Not Found", {"itemNotFound": {"message": "gone"}}),
        "/v3/volumes/busy/action": ("409 Conflict", {"conflictingRequest": {
            "message": "busy"}}),
        "/v3/volumes/bad/action": ("400 Bad Request", {"badRequest": {"message": "no"}}),
        "/v3/volumes/broken": ("500 Internal Server Error", {"computeFault": {
            "message": "boom"}}),
    }.get(environ["PATH_INFO"], ("200 OK", {"volume": {
        "id": "v1", "status": "available", "size": 1, "multiattach": False,
        "shared_targets": False, "service_uuid": None,
        "os-vol-tenant-attr:tenant_id": "p", "attachments": []}}))
    if environ["PATH_INFO"].endswith("/action") and status.startswith("200"):
        status, reply = "202 Accepted", None
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(reply).encode()] if reply is not None else []


@pytest.fixture
def http_endpoint() -> Iterator[str]:
    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}/v3"
    HttpServer("test", server, thread).stop()
    assert not thread.is_alive()


@pytest.fixture(params=["http", "wsgi"])
def client(request: pytest.FixtureRequest, http_endpoint: str) -> Iterator[VolumeClient]:
    transport: Transport = (HttpTransport(http_endpoint, timeout=5)
                            if request.param == "http" else WsgiTransport(app, http_endpoint))
    vc = VolumeClient(transport, StaticToken("service-token"), retries=1)
    SEEN.clear()
    yield vc
    vc.close()


def test_a_request_carries_path_token_microversion_and_body(client: VolumeClient) -> None:
    vol = client.get_volume("v1")
    assert (vol.id, vol.status, vol.project_id) == ("v1", "available", "p")
    client.begin_detaching("v1")
    get, action = SEEN
    assert (get["method"], get["path"], get["body"]) == ("GET", "/v3/volumes/v1", b"")
    assert get["token"] == "service-token" and get["version"] == "volume 3.71"
    assert (action["method"], action["path"]) == ("POST", "/v3/volumes/v1/action")
    assert json.loads(action["body"]) == {"os-begin_detaching": {}}
    assert action["type"] == "application/json"


def test_errors_map_to_domain_errors(client: VolumeClient) -> None:
    with pytest.raises(VolumeNotFound):
        client.get_volume("missing")
    with pytest.raises(Conflict, match="busy"):
        client.begin_detaching("busy")
    with pytest.raises(InvalidVolume, match="no"):
        client.begin_detaching("bad")
    with pytest.raises(BackendError, match=r"failed \(500\): boom"):
        client.get_volume("broken")
    assert len([s for s in SEEN if s["path"] == "/v3/volumes/broken"]) == 2  # retried once


def test_wsgi_transport_passes_the_query_string() -> None:
    SEEN.clear()
    reply = WsgiTransport(app, "http://127.0.0.1:8776/v3").request(
        "GET", "/attachments?volume_id=v1", {}, None)
    assert reply.status == 200
    assert (SEEN[0]["path"], SEEN[0]["query"]) == ("/v3/attachments", "volume_id=v1")


def test_unreachable_block_storage_is_a_backend_error() -> None:
    vc = VolumeClient(HttpTransport("http://127.0.0.1:9/v3", timeout=1), StaticToken("t"),
                      retries=0)
    with pytest.raises(BackendError, match="unreachable"):
        vc.get_volume("v1")


class Rotating:
    """A token source whose first token the server refuses."""

    def __init__(self) -> None:
        self.tokens = ["expired", "fresh"]
        self.given_back: list[str] = []

    def token(self) -> str:
        return self.tokens[0]

    def invalidate(self, token: str) -> None:
        self.given_back.append(token)
        self.tokens.remove(token)


def test_a_refused_token_is_given_back_and_the_call_made_once_more() -> None:
    seen: list[str | None] = []

    def picky(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ.get("HTTP_X_AUTH_TOKEN"))
        if environ.get("HTTP_X_AUTH_TOKEN") != "fresh":
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"unauthorized": {"code": 401, "message": "expired"}}']
        return app(environ, start_response)

    source = Rotating()
    vc = VolumeClient(WsgiTransport(picky, "http://127.0.0.1:8776/v3"), source, retries=0)
    assert vc.get_volume("v1").id == "v1"
    assert seen == ["expired", "fresh"] and source.given_back == ["expired"]
