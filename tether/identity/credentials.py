"""How a Tether service gets the token it sends to another side's API.

A :class:`TokenSource` hands out a token and takes back one the other side
refused (401), so that the next call fetches a fresh one: a token that
expired, or one issued before a restart of the identity service.
"""

from __future__ import annotations

from typing import Protocol


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
