"""Authentication behind one small interface.

An :class:`Authenticator` turns a request's headers into the caller's
:class:`RequestContext` (or a 401); handlers only ever see the context.
``[api] auth_strategy`` picks one:

* ``noauth`` (:class:`NoAuth`) follows cinderclient's noauth convention: the
  token is ``<user>:<project>``, optionally followed by ``:<role>,<role>``
  (default member and reader, and admin for the configured admin user; never
  service); a token without a colon (openstacksdk's ``notused`` for
  ``auth_type: none``) is that user in the configured default project; the
  service token
  identifies Tether's own services.  Anyone who can reach the port is whoever
  they claim to be, so it is refused on a bind address that is not loopback
  (:func:`check_bind`).
* ``local`` (:class:`LocalAuth`, the default): a token the local identity
  issued (``POST /v3/auth/tokens`` on ``[api] identity_port``), signed and
  expiring, checked by :mod:`tether.identity.tokens`; its roles are the
  user's on the token's project.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, Protocol

from tether.api.errors import ApiError
from tether.context import RequestContext
from tether.identity.tokens import InvalidToken, TokenData

_NAME_RE = re.compile(r"^[A-Za-z0-9_.@\-]{1,255}$")
Headers = Mapping[str, str]
"""Request headers, names in lower case."""


class Authenticator(Protocol):
    def authenticate(self, headers: Headers, request_id: str) -> RequestContext:
        """Return the caller's context or raise ApiError(401)."""
        ...

    def wrap(self, app: Any) -> Any:
        """The WSGI app to serve in place of ``app`` (middleware that must see
        the request first, such as keystonemiddleware's), or ``app``."""
        ...


class AuthConfigError(Exception):
    """The configured strategy cannot run as configured."""


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": "Token"})


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison that also takes what no real token is made of
    (non-ASCII header bytes) without raising."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                               expected.encode("utf-8", "surrogateescape"))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(strategy: str, bind_host: str) -> None:
    """Refuse ``noauth`` anywhere but loopback: it believes any claimed identity."""
    if strategy == "noauth" and not is_loopback(bind_host):
        raise AuthConfigError(
            f"[api] auth_strategy = noauth believes whatever identity a caller claims; "
            f"it is refused with [api] bind_host = {bind_host}, which is not a loopback "
            f"address. Use auth_strategy = local or keystone, or bind to 127.0.0.1.")


class TokenValidator(Protocol):
    def validate(self, token: str) -> TokenData:
        """The token's data, or raise InvalidToken."""
        ...


class LocalAuth:
    def __init__(self, tokens: TokenValidator) -> None:
        self.tokens = tokens

    def wrap(self, app: Any) -> Any:
        return app

    def authenticate(self, headers: Headers, request_id: str) -> RequestContext:
        token = headers.get("x-auth-token")
        if not token:
            raise unauthorized("Authentication required: send X-Auth-Token, a token from "
                               "POST /v3/auth/tokens on the identity API.")
        try:
            data = self.tokens.validate(token)
        except InvalidToken as exc:
            raise unauthorized(f"Invalid token: {exc}") from exc
        roles = data.roles
        return RequestContext(data.user_id, data.project_id, roles,
                              is_admin="admin" in roles, is_service="service" in roles,
                              request_id=request_id, auth_token=token)


class NoAuth:
    def __init__(self, admin_user: str, service_token: str, default_project: str) -> None:
        self.admin_user = admin_user
        self.service_token = service_token
        self.default_project = default_project

    def wrap(self, app: Any) -> Any:
        return app

    def authenticate(self, headers: Headers, request_id: str) -> RequestContext:
        token = headers.get("x-auth-token")
        if not token:
            raise unauthorized("Authentication required: send X-Auth-Token "
                               "'<user>:<project>'.")
        if self.service_token and same_secret(token, self.service_token):
            return RequestContext("tether-service", "service", ("service", "admin"),
                                  is_admin=True, is_service=True, request_id=request_id,
                                  auth_token=token)
        user, _, rest = token.partition(":")
        project, _, role_list = rest.partition(":")
        project = project or self.default_project
        if not (_NAME_RE.match(user) and _NAME_RE.match(project)):
            raise unauthorized("Invalid token: expected '<user>:<project>[:<role>,...]' made "
                               "of letters, digits and _.@-")
        roles = self._roles(user, role_list)
        return RequestContext(user, project, roles, is_admin="admin" in roles,
                              request_id=request_id, auth_token=token)

    def _roles(self, user: str, role_list: str) -> tuple[str, ...]:
        """The token's roles (``user:project:reader``), else member and reader
        (the admin user: admin too).  ``service`` is the service token's alone:
        claiming it would pass the CVE-2023-2088 check."""
        if not role_list:
            return ("admin", "member", "reader") if user == self.admin_user else (
                "member", "reader")
        roles = tuple(dict.fromkeys(r for r in role_list.split(",") if r))
        if not roles or not all(_NAME_RE.match(r) for r in roles):
            raise unauthorized("Invalid token: roles after the project are a comma-separated "
                               "list of names made of letters, digits and _.@-")
        if "service" in roles:
            raise unauthorized("Invalid token: the service role comes only with the service "
                               "token ([api] service_token).")
        return roles
