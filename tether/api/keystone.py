"""``[api] auth_strategy = keystone``: tokens checked by keystonemiddleware.

As in Nova and Cinder, keystonemiddleware's ``auth_token`` sits in front of
each API (configured by ``[keystone_authtoken]``), validates ``X-Auth-Token``
with Keystone and hands the application the caller in headers
(``X-Identity-Status``, ``X-User-Id``, ``X-Project-Id``, ``X-Roles``...),
which :meth:`KeystoneAuth.authenticate` turns into the
:class:`~tether.context.RequestContext`.

* ``delay_auth_decision`` is always off: a request without a valid token is
  refused by the middleware, before any Tether code runs.
* The middleware removes every such header a client sends before it sets its
  own; on top of that, :meth:`authenticate` believes them only when they came
  through this process's middleware (a per-process nonce set behind it), so a
  request that reaches the app some other way is a 401, never an identity.
* What the middleware answers itself (401, 503 when Keystone cannot be
  reached, anything else) is rewritten as Tether's JSON error body; any 5xx
  of its own becomes a 503: Keystone, not the client, is at fault.
* The version documents (and the other public paths of the app) are served
  without a token, as Nova and Cinder do (clients discover versions first).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from tether.api.auth import Headers, unauthorized
from tether.api.errors import ApiError, fault_body
from tether.context import RequestContext

LOG = logging.getLogger(__name__)

_NONCE_ENV = "HTTP_X_TETHER_KEYSTONE_CHECKED"
_NONCE_HEADER = "x-tether-keystone-checked"
_REACHED = "tether.keystone.reached_app"
_APP = "tether.keystone.app"

StartResponse = Callable[..., Any]
WsgiCallable = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def authtoken_opts() -> list[tuple[str, list[Any]]]:
    """``[keystone_authtoken]``: keystonemiddleware's own options and those of
    the password auth plugin it uses to reach Keystone (what Nova's sample
    configuration lists)."""
    from keystoneauth1 import loading
    from keystonemiddleware import opts

    plugin = [o for o in loading.get_auth_plugin_conf_options("password")
              if o.dest != "auth_section"]
    return [(group, [*options, *plugin]) for group, options in opts.list_auth_token_opts()]


class KeystoneAuth:
    """The :class:`~tether.api.auth.Authenticator` of the ``keystone`` strategy.

    ``middleware``: makes the token-checking WSGI middleware around an app
    (default keystonemiddleware's ``AuthProtocol`` on ``conf``)."""

    def __init__(self, conf: Any,
                 middleware: Callable[[WsgiCallable], WsgiCallable] | None = None) -> None:
        self.conf = conf
        self._middleware = middleware or self._auth_token
        # proves to authenticate() that the identity headers were set by the
        # middleware of this process, not sent by a client
        self._nonce = secrets.token_urlsafe(24)
        # one middleware for every API of the process (one token cache, one
        # session with Keystone), in front of the app the request is for
        self._protected: WsgiCallable | None = None
        self._lock = threading.Lock()

    def _shared(self) -> WsgiCallable:
        with self._lock:
            if self._protected is None:
                def dispatch(environ: dict[str, Any], start_response: StartResponse
                             ) -> Iterable[bytes]:
                    app: WsgiCallable = environ[_APP]
                    return app(environ, start_response)

                self._protected = self._middleware(dispatch)
            return self._protected

    def _auth_token(self, app: WsgiCallable) -> WsgiCallable:
        from keystonemiddleware import auth_token

        protocol: WsgiCallable = auth_token.AuthProtocol(app, {
            "oslo_config_config": self.conf,
            "delay_auth_decision": "false",
            "service_token_roles_required": "true",
            "log_name": "tether.keystonemiddleware",
        })
        return protocol

    def wrap(self, app: Any) -> Any:
        public = frozenset(getattr(app, "public_paths", ()))
        nonce = self._nonce

        def checked(environ: dict[str, Any], start_response: StartResponse
                    ) -> Iterable[bytes]:
            environ[_REACHED] = True
            environ[_NONCE_ENV] = nonce
            result: Iterable[bytes] = app(environ, start_response)
            return result

        protected = self._shared()

        def guarded(environ: dict[str, Any], start_response: StartResponse
                    ) -> Iterable[bytes]:
            environ.pop(_NONCE_ENV, None)
            path = environ.get("PATH_INFO") or "/"
            if path in public or (path.rstrip("/") or "/") in public:
                served: Iterable[bytes] = app(environ, start_response)
                return served
            environ[_APP] = checked
            return _answer(protected, environ, start_response)

        return guarded

    def authenticate(self, headers: Headers, request_id: str) -> RequestContext:
        given = headers.get(_NONCE_HEADER, "")
        if not secrets.compare_digest(given.encode("utf-8", "surrogateescape"),
                                      self._nonce.encode()):
            raise unauthorized("Authentication required: the request did not pass the "
                               "token check.")
        if headers.get("x-identity-status") != "Confirmed":
            raise unauthorized("Authentication required: send a valid Keystone token in "
                               "X-Auth-Token.")
        user = headers.get("x-user-id", "")
        project = headers.get("x-project-id", "")
        if not user:
            raise unauthorized("The token names no user.")
        if not project:
            raise ApiError(403, "Tether takes project-scoped tokens: this token is not "
                                "scoped to a project.")
        roles = tuple(dict.fromkeys(
            r.strip().lower() for r in headers.get("x-roles", "").split(",") if r.strip()))
        return RequestContext(user, project, roles, is_admin="admin" in roles,
                              is_service="service" in roles, request_id=request_id,
                              auth_token=headers.get("x-auth-token"))


def _answer(protected: WsgiCallable, environ: dict[str, Any],
            start_response: StartResponse) -> Iterable[bytes]:
    """Run the middleware; what it answers itself (the app never ran) becomes
    Tether's JSON error."""
    own: dict[str, Any] = {}

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if environ.get(_REACHED):
            return start_response(status, headers, exc_info)
        own["status"], own["headers"] = status, headers
        return lambda _data: None

    try:
        result = protected(environ, capture)
    except Exception:
        if environ.get(_REACHED):
            raise  # the app's own failure: its error handlers' business
        LOG.exception("the token check failed")
        return _error(start_response, 503, "The identity service could not check the "
                                           "token; try again later.", [])
    if environ.get(_REACHED):
        return result
    try:
        for _chunk in result:  # the middleware's own body, discarded
            pass
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status = int(str(own.get("status", "500")).split(" ", 1)[0])
    headers = [(k, v) for k, v in own.get("headers", [])
               if k.lower() == "www-authenticate"]
    if status == 401:
        return _error(start_response, 401, "Authentication required: send a valid Keystone "
                      "token in X-Auth-Token.", headers or [("WWW-Authenticate", "Keystone")])
    if status >= 500:
        LOG.warning("token check answered %s: Keystone unreachable or refusing Tether's "
                    "[keystone_authtoken] credentials", status)
        return _error(start_response, 503, "The identity service (Keystone) is unavailable: "
                                           "the token could not be checked.", [])
    return _error(start_response, status, f"The token check refused the request "
                                          f"({status}).", headers)


def _error(start_response: StartResponse, status: int, message: str,
           headers: list[tuple[str, str]]) -> list[bytes]:
    body = json.dumps(fault_body(status, message)).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body))), *headers])
    return [body]
