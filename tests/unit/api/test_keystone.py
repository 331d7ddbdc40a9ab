"""KeystoneAuth: the identity headers keystonemiddleware sets become the
caller's context; what the middleware answers itself becomes Tether's JSON.

The middleware is the real keystonemiddleware wherever no Keystone is
needed (a request without a token, Keystone unreachable); the header
mapping uses a stand-in that sets the headers as the middleware does after
validating a token (tests/integration/test_keystone.py does it with a real
Keystone)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from tests.integration.daemons import free_port
from tether import config
from tether.api.errors import ApiError
from tether.api.keystone import KeystoneAuth
from tether.restclient import WsgiTransport

Environ = dict[str, Any]


def whoami(auth: KeystoneAuth) -> Callable[[Environ, Any], Iterable[bytes]]:
    """A WSGI app answering the caller's context as JSON (or the 401/403)."""

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items()
                   if k.startswith("HTTP_")}
        try:
            ctx = auth.authenticate(headers, "req-1")
        except ApiError as err:
            start_response(f"{err.status} No", [("Content-Type", "application/json")])
            return [json.dumps({"refused": err.status}).encode()]
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"user": ctx.user_id, "project": ctx.project_id,
                            "roles": list(ctx.roles), "admin": ctx.is_admin,
                            "service": ctx.is_service}).encode()]

    return app


def confirming(user: str, project: str, roles: str) -> Callable[[Any], Any]:
    """Stands in for keystonemiddleware after it validated a token: it drops
    what the client sent and sets the identity headers."""

    def middleware(app: Any) -> Any:
        def call(environ: Environ, start_response: Any) -> Any:
            for key in [k for k in environ if k.startswith(("HTTP_X_IDENTITY", "HTTP_X_USER",
                                                             "HTTP_X_PROJECT", "HTTP_X_ROLES"))]:
                del environ[key]
            environ.update({"HTTP_X_IDENTITY_STATUS": "Confirmed", "HTTP_X_USER_ID": user,
                            "HTTP_X_PROJECT_ID": project, "HTTP_X_ROLES": roles})
            return app(environ, start_response)
        return call

    return middleware


def call(app: Any, headers: dict[str, str], path: str = "/v3/volumes") -> tuple[int, Any]:
    reply = WsgiTransport(app, "http://127.0.0.1:8776").request("GET", path, headers, None)
    return reply.status, json.loads(reply.body)


@pytest.mark.parametrize(("roles", "expected", "admin", "service"), [
    ("member,reader", ["member", "reader"], False, False),
    ("reader", ["reader"], False, False),
    ("Admin, member,reader", ["admin", "member", "reader"], True, False),
    ("service,admin", ["service", "admin"], True, True),
    ("", [], False, False),
])
def test_headers_become_the_context(roles: str, expected: list[str], admin: bool,
                                    service: bool) -> None:
    auth = KeystoneAuth(None, confirming("u-1", "p-1", roles))
    status, body = call(auth.wrap(whoami(auth)), {"X-Auth-Token": "t"})
    assert status == 200
    assert body == {"user": "u-1", "project": "p-1", "roles": expected, "admin": admin,
                    "service": service}


def test_unscoped_token_is_403() -> None:
    auth = KeystoneAuth(None, confirming("u-1", "", "reader"))
    assert call(auth.wrap(whoami(auth)), {"X-Auth-Token": "t"}) == (403, {"refused": 403})


def test_identity_headers_believed_only_behind_the_middleware() -> None:
    """A request that reaches the app without passing the middleware (a
    wiring mistake) is refused, whatever identity headers it carries."""
    auth = KeystoneAuth(None, confirming("u-1", "p-1", "member"))
    spoofed = {"X-Identity-Status": "Confirmed", "X-User-Id": "eve", "X-Project-Id": "p-1",
               "X-Roles": "admin,service", "X-Tether-Keystone-Checked": "guess"}
    assert call(whoami(auth), spoofed) == (401, {"refused": 401})
    with pytest.raises(ApiError) as err:
        auth.authenticate({k.lower(): v for k, v in spoofed.items()}, "r")
    assert err.value.status == 401


def test_nonce_from_the_client_is_replaced() -> None:
    auth = KeystoneAuth(None, confirming("u-1", "p-1", "member"))
    status, body = call(auth.wrap(whoami(auth)), {"X-Auth-Token": "t",
                                                  "X-Tether-Keystone-Checked": "guess"})
    assert (status, body["user"]) == (200, "u-1")


def test_public_paths_skip_the_middleware() -> None:
    def refusing(app: Any) -> Any:
        raise AssertionError("not used")

    def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"version": {}}']

    app.public_paths = frozenset({"/", "/v3"})  # type: ignore[attr-defined]
    seen: list[str] = []

    def middleware(inner: Any) -> Any:
        def mw(environ: Environ, start_response: Any) -> Any:
            seen.append(environ["PATH_INFO"])
            start_response("401 Unauthorized", [])
            return [b"no"]
        return mw

    wrapped = KeystoneAuth(None, middleware).wrap(app)
    assert call(wrapped, {}, "/v3")[0] == 200
    assert call(wrapped, {}, "/v3/")[0] == 200
    assert call(wrapped, {}, "/")[0] == 200
    assert call(wrapped, {}, "/v3/volumes")[0] == 401
    assert seen == ["/v3/volumes"]


def test_one_middleware_for_every_api() -> None:
    """Compute, block storage and image share one token cache: a token the
    compute API validated is not validated again by block storage."""
    made: list[Any] = []

    def counting(app: Any) -> Any:
        made.append(app)
        return confirming("u-1", "p-1", "member")(app)

    auth = KeystoneAuth(None, counting)
    first, second = auth.wrap(whoami(auth)), auth.wrap(whoami(auth))
    assert call(first, {"X-Auth-Token": "t"})[0] == call(second, {"X-Auth-Token": "t"})[0] == 200
    assert len(made) == 1


def test_middleware_failure_is_503_json() -> None:
    def broken(app: Any) -> Any:
        def mw(environ: Environ, start_response: Any) -> Any:
            raise RuntimeError("boom")
        return mw

    auth = KeystoneAuth(None, broken)
    status, body = call(auth.wrap(whoami(auth)), {"X-Auth-Token": "t"})
    assert status == 503 and body["serviceUnavailable"]["code"] == 503


# -- the real keystonemiddleware, with no Keystone behind its URL ------------

@pytest.fixture
def real(tmp_path: Any) -> Any:
    port = free_port()  # nothing listens there: Keystone is "down"
    path = os.path.join(tmp_path, "tether.conf")
    with open(path, "w") as f:
        f.write(f"""[api]
auth_strategy = keystone
[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:{port}/v3
auth_url = http://127.0.0.1:{port}/v3
auth_type = password
username = tether
password = secret-pw
project_name = service
user_domain_name = Default
project_domain_name = Default
http_request_max_retries = 0
[service_user]
auth_url = http://127.0.0.1:{port}/v3
password = secret-pw
""")
    conf = config.load(path, str(tmp_path))
    auth = KeystoneAuth(conf)
    return auth.wrap(whoami(auth)), port


def test_no_token_is_401_json_with_www_authenticate(real: Any) -> None:
    app, port = real
    transport = WsgiTransport(app, "http://127.0.0.1:8776")
    headers: list[Any] = []
    environ_app = transport.app

    def capture(environ: Environ, start_response: Any) -> Any:
        def sr(status: str, hdrs: Any, exc: Any = None) -> Any:
            headers.extend(hdrs)
            return start_response(status, hdrs, exc)
        return environ_app(environ, sr)

    transport.app = capture
    reply = transport.request("GET", "/v3/volumes", {}, None)
    assert reply.status == 401
    assert json.loads(reply.body)["unauthorized"]["code"] == 401
    assert ("WWW-Authenticate", f'Keystone uri="http://127.0.0.1:{port}/v3"') in headers
    assert ("Content-Type", "application/json") in headers


@pytest.mark.parametrize("headers", [
    {"X-Auth-Token": "a-token-keystone-never-saw"},
    # the client's identity headers change nothing: Keystone still has to say
    {"X-Auth-Token": "t2", "X-Identity-Status": "Confirmed", "X-User-Id": "eve",
     "X-Project-Id": "p-1", "X-Roles": "admin,service"},
    {"X-Auth-Token": "t\u00e9\u00e9"},
])
def test_keystone_unreachable_is_503_json(real: Any, headers: dict[str, str]) -> None:
    status, body = call(real[0], headers)
    assert status == 503
    assert body["serviceUnavailable"]["code"] == 503


def test_spoofed_headers_without_token_are_401(real: Any) -> None:
    status, body = call(real[0], {"X-Identity-Status": "Confirmed", "X-User-Id": "eve",
                                  "X-Project-Id": "p-1", "X-Roles": "admin,service"})
    assert (status, body["unauthorized"]["code"]) == (401, 401)


def test_authtoken_options_in_the_sample() -> None:
    groups = dict(config.list_opts())
    names = {o.dest for o in groups["keystone_authtoken"]}
    assert {"www_authenticate_uri", "auth_type", "auth_url", "username", "password",
            "project_name", "delay_auth_decision"} <= names


def test_keystone_services_authenticate_as_the_service_user(tmp_path: Any) -> None:
    from tether.api.auth import AuthConfigError
    from tether.identity.credentials import PasswordToken
    from tether.service import authenticator, service_credentials

    conf = config.load(state_dir=str(tmp_path), overrides={"api": {
        "auth_strategy": "keystone"}})
    with pytest.raises(AuthConfigError, match=r"\[service_user\]"):
        service_credentials(conf)
    conf.set_override("auth_url", "http://192.0.2.1:5000", group="service_user")
    conf.set_override("password", "pw", group="service_user")
    source = service_credentials(conf)
    assert isinstance(source, PasswordToken) and source.url == "http://192.0.2.1:5000/v3"
    assert isinstance(authenticator(conf), KeystoneAuth)
