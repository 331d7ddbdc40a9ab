"""What the local identity's store and first-start bootstrap must do on every
database Tether runs on: run on SQLite by tests/unit/identity/test_store.py
and on PostgreSQL and MariaDB by tests/integration/test_databases.py."""

from __future__ import annotations

import datetime as dt
import os
import stat
import threading
from collections.abc import Callable

import pytest
from oslo_config import cfg

from tether import config
from tether.db.api import Database
from tether.identity import local
from tether.identity.passwords import ScryptParams, verify_secret
from tether.identity.store import IdentityConflict, IdentityNotFound, IdentityStore
from tether.identity.tokens import InvalidToken, Tokens

FAST = ScryptParams(n=16, r=1, p=1)  # tests: hashing cost is not what they check


def store_of(db: Database) -> IdentityStore:
    return IdentityStore(db, FAST)


def users_projects_and_roles(db: Database, tmp: str) -> None:
    store = store_of(db)
    project = store.create_project("p1")
    alice = store.create_user("alice", "pw-alice")
    assert alice.password_hash != "pw-alice" and verify_secret("pw-alice", alice.password_hash)
    with pytest.raises(IdentityConflict):
        store.create_user("alice", "other")
    with pytest.raises(IdentityConflict):
        store.create_project("p1")
    store.add_role("alice", "p1", "member")
    store.add_role("alice", project.id, "member")  # again, by id: nothing new
    assert [a.role for a in store.assignments(user_ref="alice")] == ["member"]
    assert store.roles(alice.id, project.id) == ("reader", "member")
    assert store.check_password("alice", "pw-alice") == store.user("alice")
    assert store.check_password("alice", "wrong") is None
    assert store.check_password("nobody", "pw-alice") is None
    before = store.token_state(alice.id, project.id)
    assert before is not None
    store.remove_role("alice", "p1", "member")
    after = store.token_state(alice.id, project.id)
    assert after is not None and after.user_revision == before.user_revision + 1
    with pytest.raises(IdentityNotFound):
        store.remove_role("alice", "p1", "member")
    store.add_role("alice", "p1", "reader")
    store.set_password("alice", "new")
    assert store.check_password("alice", "new") is not None
    changed = store.token_state(alice.id, project.id)
    assert changed is not None and changed.user_revision == after.user_revision + 1
    store.delete_project("p1")
    assert store.assignments(user_ref="alice") == []
    assert store.token_state(alice.id, project.id) is None
    store.delete_user("alice")
    with pytest.raises(IdentityNotFound):
        store.user("alice")


def application_credentials(db: Database, tmp: str) -> None:
    store = store_of(db)
    store.create_project("p2")
    store.create_user("bob", "pw")
    store.add_role("bob", "p2", "member")
    with pytest.raises(Exception, match="only carry roles"):
        store.create_app_credential("bob", "p2", "ci", ["admin"])
    cred, secret = store.create_app_credential("bob", "p2", "ci", ["reader"])
    assert cred.secret_hash != secret and cred.roles == ["reader"]
    with pytest.raises(IdentityConflict):
        store.create_app_credential("bob", "p2", "ci")
    assert store.check_app_credential(secret, cred_id=cred.id) == cred
    assert store.check_app_credential(secret, name="ci", user_name="bob") == cred
    assert store.check_app_credential("wrong", cred_id=cred.id) is None
    assert store.check_app_credential(secret, name="ci", user_name="eve") is None
    later = dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(days=1)
    expiring, secret2 = store.create_app_credential("bob", "p2", "short", expires_at=later)
    assert store.check_app_credential(secret2, cred_id=expiring.id) is not None
    assert store.check_app_credential(secret2, cred_id=expiring.id,
                                      now=later + dt.timedelta(seconds=1)) is None
    store.delete_app_credential("ci", user_ref="bob")
    assert store.check_app_credential(secret, cred_id=cred.id) is None
    assert [c.name for c in store.app_credentials("bob")] == ["short"]


def revoked_tokens(db: Database, tmp: str) -> None:
    store = store_of(db)
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    store.revoke_token("a" * 32, now + dt.timedelta(hours=1))
    store.revoke_token("a" * 32, now + dt.timedelta(hours=1))  # twice: fine
    store.revoke_token("b" * 32, now - dt.timedelta(seconds=1))  # expired already
    assert store.revoked_tokens() == frozenset({"a" * 32})


def _conf(state: str) -> cfg.ConfigOpts:
    os.makedirs(state, exist_ok=True)
    return config.load(state_dir=state, overrides={"identity": {"scrypt_n": 16,
                                                                "scrypt_r": 1}})


def _together(*work: Callable[[], object]) -> None:
    barrier = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def run(job: Callable[[], object]) -> None:
        barrier.wait()
        try:
            job()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors


def bootstrap_twice_at_once_one_state_dir(db: Database, tmp: str) -> None:
    """Two API processes of one host (one state dir) start at once on one
    database: one admin, whose password is the file's."""
    conf = _conf(os.path.join(tmp, "one"))
    _together(*(lambda: local.bootstrap(conf, store_of(db)) for _ in range(4)))
    store = store_of(db)
    assert [u.name for u in store.users()] == ["admin", "tether"]
    assert [p.name for p in store.projects()] == ["admin", "service"]
    path = os.path.join(conf.state_dir, "admin-password")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(path) as f:
        assert store.check_password("admin", f.read().strip()) is not None
    admin = store.user("admin")
    assert store.roles(admin.id, store.project("admin").id) == ("reader", "member", "admin")
    svc = store.user("tether")
    assert store.roles(svc.id, store.project("service").id) == ("reader", "member", "admin",
                                                                "service")
    with open(os.path.join(conf.state_dir, "service_password")) as f:
        assert store.check_password("tether", f.read().strip()) is not None
    local.bootstrap(conf, store)  # a restart: nothing changes
    assert store.user("admin") == admin


def bootstrap_twice_at_once_two_hosts(db: Database, tmp: str) -> None:
    """API processes on two hosts (two state dirs) start at once on one
    database: one admin; the loser's password file is removed, the winner's
    password works."""
    confs = [_conf(os.path.join(tmp, f"host{i}")) for i in range(2)]
    _together(*(lambda c=c: local.bootstrap(c, store_of(db)) for c in confs))
    store = store_of(db)
    assert [u.name for u in store.users()].count("admin") == 1
    files = [os.path.join(c.state_dir, "admin-password") for c in confs]
    kept = [p for p in files if os.path.exists(p)]
    assert len(kept) == 1
    with open(kept[0]) as f:
        assert store.check_password("admin", f.read().strip()) is not None


def tokens_see_revocation(db: Database, tmp: str) -> None:
    store = store_of(db)
    store.create_project("p3")
    store.create_user("carol", "pw")
    store.add_role("carol", "p3", "member")
    ident = local.LocalIdentity(store, Tokens(store, b"k" * 32, 3600, check_interval=0))
    issued = ident.password_token("carol", "pw", "p3")
    assert ident.validate(issued.token).roles == ("reader", "member")
    store.remove_role("carol", "p3", "member")
    with pytest.raises(InvalidToken, match="revoked"):
        ident.validate(issued.token)


CASES = [users_projects_and_roles, application_credentials, revoked_tokens,
         bootstrap_twice_at_once_one_state_dir, bootstrap_twice_at_once_two_hosts,
         tokens_see_revocation]
