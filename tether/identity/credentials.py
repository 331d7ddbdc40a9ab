"""How a Tether service gets the token it sends to another side's API.

A :class:`TokenSource` hands out a token and takes back one the other side
refused (401), so that the next call fetches a fresh one: a token that
expired, or one issued before a restart of the identity service.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import httpx

from tether.exceptions import ServiceUnavailable


class TokenSource(Protocol):
    def token(self) -> str:
        """A token that is valid now (fetched or renewed as needed)."""
        ...

    def invalidate(self, token: str) -> None:
        """``token`` was refused: do not hand it out again."""
        ...


class StaticToken:
    """A token that never changes: the noauth mode's service token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def token(self) -> str:
        return self._token

    def invalidate(self, token: str) -> None:
        pass  # nothing better to offer: the caller sees the 401

    def __repr__(self) -> str:
        return "StaticToken(***)"


class PasswordToken:
    """A project-scoped token for a user, from any Identity v3 service (Tether's
    own ``local`` identity or Keystone): ``POST /v3/auth/tokens`` with the
    password method, kept until a minute before it expires or until refused.

    What Nova's ``[service_user]`` does with keystoneauth, for the one call
    Tether's services need."""

    RENEW_BEFORE = 60.0

    def __init__(self, auth_url: str, username: str, password: str, project_name: str,
                 user_domain: str = "Default", project_domain: str = "Default",
                 timeout: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self.url = auth_url.rstrip("/")
        if not self.url.endswith("/v3"):
            self.url += "/v3"
        self.body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": username, "domain": {"name": user_domain}, "password": password}}},
            "scope": {"project": {"name": project_name, "domain": {"name": project_domain}}},
        }}
        self.username = username
        self.timeout = timeout
        self.clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def token(self) -> str:
        with self._lock:
            if self._token is None or self.clock() > self._expires - self.RENEW_BEFORE:
                self._token, self._expires = self._issue()
            return self._token

    def invalidate(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _issue(self) -> tuple[str, float]:
        try:
            resp = httpx.post(self.url + "/auth/tokens", json=self.body, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise IdentityUnavailable(f"identity service unreachable at {self.url}: "
                                      f"{exc}") from exc
        if resp.status_code != 201 or "X-Subject-Token" not in resp.headers:
            raise IdentityUnavailable(
                f"identity service at {self.url} refused a token for service user "
                f"{self.username!r} ({resp.status_code}): check [service_user]")
        try:
            expires = resp.json()["token"]["expires_at"]
            when = datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError) as exc:
            raise IdentityUnavailable(f"identity service at {self.url} sent a token "
                                      f"without a readable expires_at") from exc
        return resp.headers["X-Subject-Token"], when

    def __repr__(self) -> str:
        return f"PasswordToken({self.url}, user={self.username!r})"


class IdentityUnavailable(ServiceUnavailable):
    """No token could be had: the identity service is down or refused the
    service user's credentials (a 503 to whoever asked for the work)."""
