"""The local identity's wiring: first-start accounts made whole or not at all,
the key and password files, the services' token source, the authenticator."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from oslo_config import cfg

from tests.unit.identity.store_cases import FAST
from tether import config, service
from tether.api.auth import LocalAuth
from tether.db import migrate
from tether.db.api import Database
from tether.db.records import ROLE_ASSIGNMENTS
from tether.identity import local
from tether.identity.credentials import PasswordToken
from tether.identity.store import IdentityNotFound, IdentityStore


def _conf(tmp_path: Path, **api: object) -> cfg.ConfigOpts:
    return config.load(state_dir=str(tmp_path), overrides={
        "api": {"auth_strategy": "local", **api}, "identity": {"scrypt_n": 16,
                                                               "scrypt_r": 1}})


@pytest.fixture
def store(tmp_path: Path) -> IdentityStore:
    db = Database(f"sqlite:///{tmp_path}/t.db")
    migrate.upgrade(db)
    return IdentityStore(db, FAST)


def test_a_crash_while_bootstrapping_leaves_no_half_account(
        tmp_path: Path, store: IdentityStore, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = _conf(tmp_path)
    real = ROLE_ASSIGNMENTS.insert

    def dies(*args: object, **kwargs: object) -> object:
        raise SystemExit("killed between the user and its role")

    monkeypatch.setattr(ROLE_ASSIGNMENTS, "insert", dies)
    with pytest.raises(SystemExit):
        local.bootstrap(conf, store)
    with pytest.raises(IdentityNotFound):
        store.user("admin")  # rolled back with the role it lacked
    monkeypatch.setattr(ROLE_ASSIGNMENTS, "insert", real)
    local.bootstrap(conf, store)  # the next start
    admin = store.user("admin")
    assert store.roles(admin.id, store.project("admin").id) == ("reader", "member", "admin")
    with open(tmp_path / "admin-password") as f:  # the file of the first attempt
        assert store.check_password("admin", f.read().strip()) is not None


def test_key_and_password_files(tmp_path: Path) -> None:
    conf = _conf(tmp_path)
    key = local.token_key(conf)
    assert len(key) == 32 and local.token_key(conf) == key
    password = local.service_password(conf)
    assert local.service_password(conf) == password
    for name in ("token.key", "service_password"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    (tmp_path / "token.key").write_text("not hex\n")
    with pytest.raises(RuntimeError, match="hex"):
        local.token_key(conf)


def test_services_get_their_token_from_the_identity(tmp_path: Path) -> None:
    conf = _conf(tmp_path, identity_port=5123, public_host="api.example")
    source = service.service_credentials(conf)
    assert isinstance(source, PasswordToken)
    assert source.url == "http://api.example:5123/v3"
    user = source.body["auth"]["identity"]["password"]["user"]  # type: ignore[index]
    with open(tmp_path / "service_password") as f:
        assert user["password"] == f.read().strip() and user["name"] == "tether"
    configured = config.load(state_dir=str(tmp_path / "other"), overrides={
        "api": {"auth_strategy": "local"}, "service_user": {
            "password": "given", "auth_url": "http://keystone.example:5000"}})
    other = service.service_credentials(configured)
    assert isinstance(other, PasswordToken) and other.url == "http://keystone.example:5000/v3"
    assert not os.path.exists(tmp_path / "other" / "service_password")


def test_local_strategy_needs_the_identity(tmp_path: Path, store: IdentityStore) -> None:
    conf = _conf(tmp_path)
    with pytest.raises(ValueError, match="local identity"):
        service.authenticator(conf)
    ident = local.make(conf, store.db)
    assert isinstance(service.authenticator(conf, ident), LocalAuth)
