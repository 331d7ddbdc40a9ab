"""Password and secret hashes: scrypt (``hashlib.scrypt``) with a random salt,
compared in constant time.

A hash is ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (salt and key in URL-safe
base64), so that hashes made with other parameters (``[identity] scrypt_n``
changed since) still verify.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

_KEY_LEN = 32
_SALT_LEN = 16
# an upper bound on what a stored hash may ask for: a tampered row must not
# make verification allocate gigabytes
_MAX_MEMORY = 256 * 1024 * 1024


@dataclass(frozen=True)
class ScryptParams:
    n: int = 2 ** 14
    r: int = 8
    p: int = 1

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1):
            raise ValueError(f"scrypt n must be a power of 2 (got {self.n})")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(secret: str, salt: bytes, params: ScryptParams) -> bytes:
    memory = 128 * params.r * (params.n + params.p + 2)
    return hashlib.scrypt(secret.encode("utf-8", "surrogateescape"), salt=salt,
                          n=params.n, r=params.r, p=params.p, dklen=_KEY_LEN,
                          maxmem=max(memory * 2, 32 * 1024 * 1024))


def hash_secret(secret: str, params: ScryptParams) -> str:
    salt = secrets.token_bytes(_SALT_LEN)
    key = _derive(secret, salt, params)
    return f"scrypt${params.n}${params.r}${params.p}${_b64(salt)}${_b64(key)}"


def verify_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` is the one ``stored`` was made from (False for a
    malformed hash, never an exception)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        params = ScryptParams(int(n), int(r), int(p))
        if scheme != "scrypt" or 128 * params.r * params.n > _MAX_MEMORY:
            return False
        expected = _unb64(key)
        got = _derive(secret, _unb64(salt), params)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


# verifying against this when no user matched keeps "no such user" as slow as
# "wrong password" (a timing difference would tell which names exist)
_DUMMY: dict[ScryptParams, str] = {}


def verify_nothing(secret: str, params: ScryptParams) -> bool:
    dummy = _DUMMY.get(params)
    if dummy is None:
        dummy = _DUMMY[params] = hash_secret(secrets.token_urlsafe(16), params)
    verify_secret(secret, dummy)
    return False
