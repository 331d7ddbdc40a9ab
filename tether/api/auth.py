"""Authentication behind one small interface.

``NoAuth`` (the default) follows cinderclient's noauth convention: the token
is ``<user>:<project>``; a token without a colon (openstacksdk's ``notused``
for ``auth_type: none``) is that user in the configured default project; the
configured admin user is an administrator; the service token identifies
Tether's own services.  Keystone middleware can replace it without touching
a handler: handlers only ever see a :class:`RequestContext`.
"""

from __future__ import annotations

import hmac
import re
from typing import Protocol

from tether.api.errors import ApiError
from tether.context import RequestContext

_NAME_RE = re.compile(r"^[A-Za-z0-9_.@\-]{1,255}$")


class Authenticator(Protocol):
    def authenticate(self, token: str | None, request_id: str) -> RequestContext:
        """Return the caller's context or raise ApiError(401)."""
        ...


class NoAuth:
    def __init__(self, admin_user: str, service_token: str, default_project: str) -> None:
        self.admin_user = admin_user
        self.service_token = service_token
        self.default_project = default_project

    def authenticate(self, token: str | None, request_id: str) -> RequestContext:
        if not token:
            raise ApiError(401, "Authentication required: send X-Auth-Token "
                                "'<user>:<project>'.", {"WWW-Authenticate": "Token"})
        if self.service_token and hmac.compare_digest(token, self.service_token):
            return RequestContext("tether-service", "service", ("service", "admin"),
                                  is_admin=True, is_service=True, request_id=request_id,
                                  auth_token=token)
        user, _, project = token.partition(":")
        project = project or self.default_project
        if not (_NAME_RE.match(user) and _NAME_RE.match(project)):
            raise ApiError(401, "Invalid token: expected '<user>:<project>' made of "
                                "letters, digits and _.@-", {"WWW-Authenticate": "Token"})
        is_admin = user == self.admin_user
        roles = ("admin", "member", "reader") if is_admin else ("member", "reader")
        return RequestContext(user, project, roles, is_admin=is_admin,
                              request_id=request_id, auth_token=token)
