"""Signed, expiring tokens of the local identity, and their validation.

A token is ``tt1.<payload>.<mac>``: the payload is compact JSON (token id,
user, project, roles, issue and expiry times, the user's and project's
revisions, the application credential if one was used) in URL-safe base64,
the MAC an HMAC-SHA256 of ``tt1.<payload>`` with the key of
``[identity] token_key_file``.  Nothing is stored per token: any API process
with the key validates it.

Validation (:meth:`Tokens.validate`) checks, in order: the MAC (skipped for a
token already verified: a bounded cache of verified payloads), the expiry,
the revoked-token list (``DELETE /v3/auth/tokens``), and that the user's and
project's revisions are still the token's.  The revoked list and the
revisions are read from the database at most every ``[identity]
revocation_check_interval`` seconds per process; revocations made through
this process apply at once (:meth:`Tokens.forget`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.identity.store import IdentityStore, TokenState

PREFIX = "tt1."
_CACHE_SIZE = 10000


class InvalidToken(Exception):
    """The token is not (or no longer) valid; the message says why, and is
    safe to show the caller."""


@dataclass(frozen=True)
class TokenData:
    id: str
    user_id: str
    user_name: str
    project_id: str
    project_name: str
    roles: tuple[str, ...]
    issued_at: float
    expires_at: float
    user_revision: int
    project_revision: int
    app_credential_id: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"i": self.id, "u": self.user_id, "un": self.user_name, "p": self.project_id,
                "pn": self.project_name, "r": list(self.roles), "t": self.issued_at,
                "e": self.expires_at, "ur": self.user_revision, "pr": self.project_revision,
                "a": self.app_credential_id}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TokenData:
        roles = d["r"]
        if not isinstance(roles, list):
            raise TypeError("roles")
        return cls(str(d["i"]), str(d["u"]), str(d["un"]), str(d["p"]), str(d["pn"]),
                   tuple(str(r) for r in roles), float(d["t"]), float(d["e"]), int(d["ur"]),
                   int(d["pr"]), None if d.get("a") is None else str(d["a"]))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_key() -> str:
    """A new signing key, as the key file holds it (hex, one line)."""
    return secrets.token_hex(32) + "\n"


class Tokens:
    def __init__(self, store: IdentityStore, key: bytes, lifetime: float,
                 check_interval: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        if len(key) < 16:
            raise ValueError("the token key must be at least 16 bytes")
        self.store = store
        self._key = key
        self.lifetime = lifetime
        self.check_interval = check_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._verified: dict[str, TokenData] = {}
        self._states: dict[tuple[str, str, str | None], tuple[float, TokenState | None]] = {}
        self._revoked: frozenset[str] = frozenset()
        self._revoked_at = float("-inf")

    # -- issue --------------------------------------------------------------
    def issue(self, user_id: str, user_name: str, project_id: str, project_name: str,
              roles: tuple[str, ...], state: TokenState,
              app_credential_id: str | None = None) -> tuple[str, TokenData]:
        now = self.clock()
        data = TokenData(secrets.token_hex(16), user_id, user_name, project_id, project_name,
                         roles, round(now, 3), round(now + self.lifetime, 3),
                         state.user_revision, state.project_revision, app_credential_id)
        payload = PREFIX + _b64(json.dumps(data.to_json(), separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(payload))}", data

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest()

    # -- validate -------------------------------------------------------------
    def validate(self, token: str) -> TokenData:
        """The token's data, or :class:`InvalidToken`."""
        data = self._verified.get(token)
        if data is None:
            data = self._verify(token)
            with self._lock:
                if len(self._verified) >= _CACHE_SIZE:
                    self._verified.clear()  # (an attacker's junk is never cached)
                self._verified[token] = data
        now = self.clock()
        if data.expires_at <= now:
            raise InvalidToken("The token has expired.")
        if data.id in self._revoked_now(now):
            raise InvalidToken("The token has been revoked.")
        state = self._state(data, now)
        if state is None or not (state.user_enabled and state.project_enabled) or \
                state.user_revision != data.user_revision or \
                state.project_revision != data.project_revision:
            raise InvalidToken("The token has been revoked: its user, project, roles or "
                               "password changed since it was issued.")
        return data

    def _verify(self, token: str) -> TokenData:
        payload, _, mac = token.rpartition(".")
        if not payload.startswith(PREFIX) or not payload.isascii() or not mac.isascii():
            raise InvalidToken("The token is not one this identity issued.")
        try:
            given = _unb64(mac)
        except (binascii.Error, ValueError) as exc:
            raise InvalidToken("The token is not one this identity issued.") from exc
        if not hmac.compare_digest(given, self._mac(payload)):
            raise InvalidToken("The token's signature is not valid.")
        try:
            return TokenData.from_json(json.loads(_unb64(payload[len(PREFIX):])))
        except (ValueError, KeyError, TypeError) as exc:  # signed by us: only a bug
            raise InvalidToken("The token is malformed.") from exc

    def _revoked_now(self, now: float) -> frozenset[str]:
        if now - self._revoked_at > self.check_interval:
            revoked = self.store.revoked_tokens()
            with self._lock:
                self._revoked, self._revoked_at = revoked, now
        return self._revoked

    def _state(self, data: TokenData, now: float) -> TokenState | None:
        key = (data.user_id, data.project_id, data.app_credential_id)
        hit = self._states.get(key)
        if hit is not None and now - hit[0] <= self.check_interval:
            return hit[1]
        state = self.store.token_state(data.user_id, data.project_id)
        if state is not None and data.app_credential_id is not None and \
                self.store.app_credential(data.app_credential_id) is None:
            state = None
        with self._lock:
            if len(self._states) >= _CACHE_SIZE:
                self._states.clear()
            self._states[key] = (now, state)
        return state

    # -- revoke ---------------------------------------------------------------
    def revoke(self, data: TokenData) -> None:
        """``DELETE /v3/auth/tokens``: this one token, until it expires."""
        expires = dt.datetime.fromtimestamp(data.expires_at, dt.UTC).replace(tzinfo=None)
        self.store.revoke_token(data.id, expires)
        with self._lock:
            self._revoked = self._revoked | {data.id}

    def forget(self) -> None:
        """Something was revoked through this process: read the state again
        at the next validation."""
        with self._lock:
            self._states.clear()
            self._revoked_at = float("-inf")
