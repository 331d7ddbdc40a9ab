"""``tether user|project|role|application-credential`` on the database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tether import config
from tether.cli import main
from tether.db import migrate
from tether.db.api import Database
from tether.identity.local import scrypt_params
from tether.identity.store import IdentityStore


class Cli:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.conf = tmp_path / "tether.conf"
        self.conf.write_text("[identity]\nscrypt_n = 16\nscrypt_r = 1\n")
        self.base = ["--config-file", str(self.conf), "--state-dir", str(tmp_path)]
        self.state = str(tmp_path)
        self.capsys = capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = main([*self.base, *argv])
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def store(self) -> IdentityStore:
        conf = config.load(str(self.conf), self.state)
        return IdentityStore(Database(config.database_url(conf)), scrypt_params(conf))


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Cli:
    cli = Cli(tmp_path, capsys)
    assert cli("db", "upgrade")[0] == 0
    monkeypatch.setenv("TETHER_NEW_PASSWORD", "first")
    return cli


def test_accounts_roles_and_credentials(run: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("project", "create", "p1")[0] == 0
    rc, out, _ = run("user", "create", "alice", "--project", "p1")
    assert rc == 0 and "name=alice" in out
    store = run.store()
    assert store.check_password("alice", "first") is not None
    assert run("role", "add", "reader", "--user", "alice", "--project", "p1")[0] == 0
    rc, out, _ = run("role", "list", "--user", "alice", "--json")
    assert sorted(r["role"] for r in json.loads(out)) == ["member", "reader"]
    rc, out, _ = run("application-credential", "create", "ci", "--user", "alice",
                     "--project", "p1", "--role", "reader", "--json")
    made = json.loads(out)[0]
    assert store.check_app_credential(made["secret"], cred_id=made["id"]) is not None
    monkeypatch.setenv("TETHER_NEW_PASSWORD", "second")
    assert run("user", "set-password", "alice")[0] == 0
    assert store.check_password("alice", "first") is None
    assert store.check_password("alice", "second") is not None
    rc, _, err = run("user", "create", "alice")
    assert rc == 1 and "already exists" in err
    rc, _, err = run("role", "remove", "admin", "--user", "alice", "--project", "p1")
    assert rc == 1 and "has no role" in err
    assert run("application-credential", "delete", "ci", "--user", "alice")[0] == 0
    assert run("user", "delete", "alice")[0] == 0
    rc, out, _ = run("user", "list", "--json")
    assert json.loads(out) == []
    assert run("project", "delete", "p1")[0] == 0
    rc, _, err = run("project", "delete", "p1")
    assert rc == 1 and "No project" in err
    assert migrate.current(store.db) == migrate.head()
