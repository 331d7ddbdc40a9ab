"""PasswordToken against a small Identity v3 stand-in served over HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from waitress.server import create_server

from tether.identity.credentials import IdentityUnavailable, PasswordToken
from tether.service import HttpServer

ISSUED: list[dict[str, Any]] = []


def identity(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    body = json.loads(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
    ISSUED.append(body)
    user = body["auth"]["identity"]["password"]["user"]
    if user["password"] != "right":
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b'{"error": {"code": 401, "message": "nope"}}']
    expires = "2030-01-01T00:00:00.000000Z" if user["name"] == "svc" else "garbage"
    start_response("201 Created", [("Content-Type", "application/json"),
                                   ("X-Subject-Token", f"tok-{len(ISSUED)}")])
    return [json.dumps({"token": {"expires_at": expires}}).encode()]


@pytest.fixture
def auth_url() -> Iterator[str]:
    server = create_server(identity, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ISSUED.clear()
    yield f"http://127.0.0.1:{server.effective_port}"
    HttpServer("identity", server, thread).stop()


def test_a_token_is_kept_until_refused(auth_url: str) -> None:
    source = PasswordToken(auth_url, "svc", "right", "service")
    first = source.token()
    assert source.token() == first and len(ISSUED) == 1
    sent = ISSUED[0]["auth"]
    assert sent["identity"]["methods"] == ["password"]
    assert sent["scope"]["project"] == {"name": "service", "domain": {"name": "Default"}}
    source.invalidate("some-other-token")
    assert source.token() == first
    source.invalidate(first)
    assert source.token() != first and len(ISSUED) == 2


def test_a_token_is_renewed_a_minute_before_it_expires(auth_url: str) -> None:
    now = [1893456000.0 - 3600]  # an hour before 2030-01-01
    source = PasswordToken(auth_url + "/v3/", "svc", "right", "service",
                           clock=lambda: now[0])
    first = source.token()
    now[0] = 1893456000.0 - 61
    assert source.token() == first
    now[0] = 1893456000.0 - 59
    assert source.token() != first


def test_refused_credentials_say_which_user_and_where_to_look(auth_url: str) -> None:
    with pytest.raises(IdentityUnavailable, match=r"'svc' \(401\): check \[service_user\]"):
        PasswordToken(auth_url, "svc", "wrong", "service").token()


def test_an_unreadable_expiry_is_refused(auth_url: str) -> None:
    with pytest.raises(IdentityUnavailable, match="expires_at"):
        PasswordToken(auth_url, "other", "right", "service").token()


def test_an_unreachable_identity_is_a_503() -> None:
    with pytest.raises(IdentityUnavailable, match="unreachable") as err:
        PasswordToken("http://127.0.0.1:9", "svc", "right", "service", timeout=1).token()
    assert err.value.code == 503


def test_the_password_is_not_in_repr(auth_url: str) -> None:
    assert "right" not in repr(PasswordToken(auth_url, "svc", "right", "service"))
