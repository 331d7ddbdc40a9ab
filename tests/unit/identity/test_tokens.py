"""Tokens: signed, expiring, revoked by revision or by id; validation is
cached, and a revocation made elsewhere applies within the check interval."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest

from tests.unit.identity.store_cases import FAST
from tether.db import migrate
from tether.db.api import Database
from tether.identity.local import AuthFailed, LocalIdentity
from tether.identity.passwords import ScryptParams, hash_secret, verify_secret
from tether.identity.store import IdentityStore
from tether.identity.tokens import InvalidToken, Tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ident(tmp_path: Path, clock: Clock) -> LocalIdentity:
    db = Database(f"sqlite:///{tmp_path}/t.db")
    migrate.upgrade(db)
    store = IdentityStore(db, FAST)
    store.create_project("p1")
    store.create_user("alice", "pw")
    store.add_role("alice", "p1", "member")
    return LocalIdentity(store, Tokens(store, b"k" * 32, 600, check_interval=2.0,
                                       clock=clock))


def test_a_token_carries_user_project_and_roles(ident: LocalIdentity) -> None:
    issued = ident.password_token("alice", "pw", "p1")
    data = ident.validate(issued.token)
    assert (data.user_name, data.project_name, data.roles) == ("alice", "p1",
                                                               ("reader", "member"))
    assert data.project_id == ident.store.project("p1").id
    assert data.expires_at - data.issued_at == 600


def test_wrong_password_unknown_user_or_project_is_refused(ident: LocalIdentity) -> None:
    for user, password, project in (("alice", "nope", "p1"), ("eve", "pw", "p1"),
                                    ("alice", "pw", "p2")):
        with pytest.raises(AuthFailed):
            ident.password_token(user, password, project)


def test_expired(ident: LocalIdentity, clock: Clock) -> None:
    token = ident.password_token("alice", "pw", "p1").token
    clock.now += 600
    with pytest.raises(InvalidToken, match="expired"):
        ident.validate(token)


def test_tampered_payload_or_signature_or_other_key(ident: LocalIdentity,
                                                    clock: Clock) -> None:
    token = ident.password_token("alice", "pw", "p1").token
    prefix, payload, mac = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["r"] = ["reader", "member", "admin"]
    forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
    data = ident.validate(token)
    state = ident.store.token_state(data.user_id, data.project_id)
    assert state is not None
    other_key, _ = Tokens(ident.store, b"x" * 32, 600, clock=clock).issue(
        data.user_id, data.user_name, data.project_id, data.project_name, ("admin",), state)
    for bad in (f"{prefix}.{forged}.{mac}", f"{prefix}.{payload}.{mac[:-2]}AA", other_key,
                "alice:p1", "tt1.é.ü", "tt1..", ""):
        with pytest.raises(InvalidToken):
            ident.validate(bad)


def test_revocations_apply_at_once_here_and_within_the_interval_elsewhere(
        ident: LocalIdentity, clock: Clock) -> None:
    token = ident.password_token("alice", "pw", "p1").token
    ident.validate(token)
    ident.store.set_password("alice", "new")  # as another process (the CLI) would
    ident.validate(token)  # trusted for the check interval
    clock.now += 2.1
    with pytest.raises(InvalidToken, match="revoked"):
        ident.validate(token)
    fresh = ident.password_token("alice", "new", "p1").token
    ident.revoke(fresh)  # DELETE /v3/auth/tokens: this one, at once
    with pytest.raises(InvalidToken, match="revoked"):
        ident.validate(fresh)
    again = ident.password_token("alice", "new", "p1").token
    ident.validate(again)
    ident.store.delete_user("alice")
    ident.tokens.forget()
    with pytest.raises(InvalidToken):
        ident.validate(again)


def test_application_credential_token_and_its_deletion(ident: LocalIdentity,
                                                       clock: Clock) -> None:
    cred, secret = ident.store.create_app_credential("alice", "p1", "ci", ["reader"])
    issued = ident.app_credential_token(secret, cred_id=cred.id)
    assert issued.data.roles == ("reader",) and issued.data.app_credential_id == cred.id
    assert ident.app_credential_token(secret, name="ci", user_name="alice").data.roles == (
        "reader",)
    with pytest.raises(AuthFailed):
        ident.app_credential_token("wrong", cred_id=cred.id)
    ident.store.delete_app_credential(cred.id)
    clock.now += 2.1
    with pytest.raises(InvalidToken):
        ident.validate(issued.token)


def test_scrypt_hashes_verify_with_their_own_parameters() -> None:
    stored = hash_secret("s3cret", ScryptParams(n=32, r=2, p=1))
    assert stored.startswith("scrypt$32$2$1$")
    assert verify_secret("s3cret", stored)
    assert not verify_secret("s3cret!", stored)
    assert not verify_secret("s3cret", "scrypt$x$y")
    assert not verify_secret("s3cret", "scrypt$1073741824$8$1$AA$AA")  # too costly: refused
    assert hash_secret("s3cret", FAST) != hash_secret("s3cret", FAST)  # salted


def test_validation_cost(ident: LocalIdentity, capsys: pytest.CaptureFixture[str]) -> None:
    """Numbers for docs/identity.md: a cached validation is dictionary
    lookups; an uncached one adds the HMAC, the JSON and one query."""
    tokens = [ident.password_token("alice", "pw", "p1").token for _ in range(50)]
    started = time.perf_counter()
    rounds = 200
    for _ in range(rounds):
        for t in tokens:
            ident.validate(t)
    cached = (time.perf_counter() - started) / (rounds * len(tokens)) * 1e6
    started = time.perf_counter()
    for t in tokens:
        ident.tokens._verified.clear()
        ident.tokens._states.clear()
        ident.validate(t)
    uncached = (time.perf_counter() - started) / len(tokens) * 1e6
    with capsys.disabled():
        print(f"\ntoken validation: {cached:.1f} µs cached, {uncached:.0f} µs uncached "
              "(signature + state query)")
    assert cached < uncached
