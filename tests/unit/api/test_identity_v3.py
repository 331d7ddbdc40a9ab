"""The local identity's Identity v3 API as the OpenStack clients call it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon.testing
import pytest

from tests.unit.identity.store_cases import FAST
from tether import config
from tether.api import identity_v3
from tether.api.auth import LocalAuth
from tether.api.errors import ApiError
from tether.db import migrate
from tether.db.api import Database
from tether.identity.local import LocalIdentity
from tether.identity.store import IdentityStore
from tether.identity.tokens import Tokens


@pytest.fixture
def ident(tmp_path: Path) -> LocalIdentity:
    db = Database(f"sqlite:///{tmp_path}/t.db")
    migrate.upgrade(db)
    store = IdentityStore(db, FAST)
    for project in ("p1", "p2", "admin"):
        store.create_project(project)
    for user, project, role in (("alice", "p1", "member"), ("alice", "p2", "reader"),
                                ("bob", "p1", "member"), ("root", "admin", "admin")):
        if user not in [u.name for u in store.users()]:
            store.create_user(user, f"pw-{user}")
        store.add_role(user, project, role)
    return LocalIdentity(store, Tokens(store, b"k" * 32, 3600, check_interval=0))


@pytest.fixture
def client(ident: LocalIdentity, tmp_path: Path) -> falcon.testing.TestClient:
    conf = config.load(state_dir=str(tmp_path), overrides={"api": {
        "public_host": "cloud.example", "identity_port": 5001}})
    return falcon.testing.TestClient(identity_v3.create_app(
        ident, identity_v3.catalog_services(conf), max_body=4096))


def password(user: str, pw: str, project: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {
        "user": {"name": user, "domain": {"name": "Default"}, "password": pw}}}}}
    if project is not None:
        body["auth"]["scope"] = {"project": project}
    return body


def token(client: falcon.testing.TestClient, user: str, project: str) -> str:
    res = client.simulate_post("/v3/auth/tokens", json=password(
        user, f"pw-{user}", {"name": project, "domain": {"id": "default"}}))
    assert res.status_code == 201, res.text
    return res.headers["X-Subject-Token"]


def test_discovery(client: falcon.testing.TestClient) -> None:
    assert client.simulate_get("/").status_code == 300
    doc = client.simulate_get("/v3").json["version"]
    assert doc["id"].startswith("v3.") and doc["links"][0]["href"].endswith("/v3/")


def test_password_token_with_catalog(client: falcon.testing.TestClient,
                                     ident: LocalIdentity) -> None:
    res = client.simulate_post("/v3/auth/tokens", json=password(
        "alice", "pw-alice", {"name": "p1", "domain": {"name": "Default"}}))
    assert res.status_code == 201
    body = res.json["token"]
    assert body["user"]["name"] == "alice" and body["project"]["name"] == "p1"
    assert [r["name"] for r in body["roles"]] == ["reader", "member"]
    assert body["expires_at"].endswith("Z")
    urls = {(s["type"], e["interface"]): e["url"] for s in body["catalog"]
            for e in s["endpoints"]}
    assert urls[("volumev3", "public")] == "http://cloud.example:8776/v3"
    assert urls[("compute", "internal")] == "http://cloud.example:8774/v2.1"
    assert urls[("identity", "public")] == "http://cloud.example:5001/v3"
    assert ("image", "public") in urls
    data = ident.validate(res.headers["X-Subject-Token"])
    assert data.project_id == body["project"]["id"]
    by_id = client.simulate_post("/v3/auth/tokens", json=password(
        "alice", "pw-alice", {"id": body["project"]["id"]}))
    assert by_id.status_code == 201
    nocatalog = client.simulate_post("/v3/auth/tokens", query_string="nocatalog",
                                     json=password("alice", "pw-alice", {"name": "p2"}))
    assert "catalog" not in nocatalog.json["token"]
    assert [r["name"] for r in nocatalog.json["token"]["roles"]] == ["reader"]


@pytest.mark.parametrize("body", [
    password("alice", "wrong", {"name": "p1"}),
    password("eve", "pw-alice", {"name": "p1"}),
    password("bob", "pw-bob", {"name": "p2"}),  # no role there
    password("alice", "pw-alice", {"name": "nope"}),
    password("alice", "pw-alice", {"name": "p1", "domain": {"name": "Other"}}),
    password("alice", "pw-alice"),  # two projects: which one?
    {"auth": {"identity": {"methods": ["token"], "token": {"id": "x"}}}},
], ids=["wrong-password", "no-user", "no-role", "no-project", "other-domain", "unscoped",
        "token-method"])
def test_refused_is_a_keystone_401(client: falcon.testing.TestClient,
                                   body: dict[str, Any]) -> None:
    res = client.simulate_post("/v3/auth/tokens", json=body)
    assert res.status_code == 401
    assert res.json["error"]["code"] == 401 and res.json["error"]["title"] == "Unauthorized"
    assert "X-Subject-Token" not in res.headers


@pytest.mark.parametrize("raw", [b"", b"{", b'{"auth": 1}', b'{"auth": {}}', b"[]",
                                 b'{"auth": {"identity": {"methods": "password"}}}'])
def test_malformed_is_a_400(client: falcon.testing.TestClient, raw: bytes) -> None:
    res = client.simulate_post("/v3/auth/tokens", body=raw,
                               headers={"Content-Type": "application/json"})
    assert res.status_code == 400 and res.json["error"]["code"] == 400


def test_too_large_is_a_413(client: falcon.testing.TestClient) -> None:
    res = client.simulate_post("/v3/auth/tokens", body=b"x" * 5000,
                               headers={"Content-Type": "application/json"})
    assert res.status_code == 413


def test_unscoped_request_of_a_one_project_user_is_scoped(
        client: falcon.testing.TestClient) -> None:
    res = client.simulate_post("/v3/auth/tokens", json=password("bob", "pw-bob"))
    assert res.status_code == 201 and res.json["token"]["project"]["name"] == "p1"


def test_application_credential_by_id_and_by_name(client: falcon.testing.TestClient,
                                                  ident: LocalIdentity) -> None:
    cred, secret = ident.store.create_app_credential("alice", "p1", "ci")
    for method in ({"id": cred.id, "secret": secret},
                   {"name": "ci", "user": {"name": "alice", "domain": {"name": "Default"}},
                    "secret": secret}):
        res = client.simulate_post("/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["application_credential"], "application_credential": method}}})
        assert res.status_code == 201, res.text
        assert res.json["token"]["application_credential"]["id"] == cred.id
        assert res.json["token"]["project"]["name"] == "p1"
    res = client.simulate_post("/v3/auth/tokens", json={"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"id": cred.id, "secret": "wrong"}}}})
    assert res.status_code == 401


def test_validate_head_and_revoke(client: falcon.testing.TestClient) -> None:
    alice, bob, root = (token(client, "alice", "p1"), token(client, "bob", "p1"),
                        token(client, "root", "admin"))
    got = client.simulate_get("/v3/auth/tokens", headers={
        "X-Auth-Token": root, "X-Subject-Token": alice})
    assert got.status_code == 200 and got.json["token"]["user"]["name"] == "alice"
    assert got.headers["X-Subject-Token"] == alice
    assert client.simulate_get("/v3/auth/tokens", headers={
        "X-Auth-Token": alice, "X-Subject-Token": alice}).status_code == 200  # own
    assert client.simulate_get("/v3/auth/tokens", headers={
        "X-Auth-Token": bob, "X-Subject-Token": alice}).status_code == 403
    assert client.simulate_head("/v3/auth/tokens", headers={
        "X-Auth-Token": root, "X-Subject-Token": alice}).status_code == 200
    assert client.simulate_get("/v3/auth/tokens", headers={
        "X-Auth-Token": root}).status_code == 400
    assert client.simulate_get("/v3/auth/tokens", headers={
        "X-Auth-Token": root, "X-Subject-Token": "tt1.junk.junk"}).status_code == 404
    assert client.simulate_get("/v3/auth/tokens", headers={
        "X-Subject-Token": alice}).status_code == 401
    assert client.simulate_delete("/v3/auth/tokens", headers={
        "X-Auth-Token": alice, "X-Subject-Token": alice}).status_code == 204
    assert client.simulate_get("/v3/auth/tokens", headers={
        "X-Auth-Token": root, "X-Subject-Token": alice}).status_code == 404
    assert client.simulate_get("/v3/auth/catalog", headers={
        "X-Auth-Token": alice}).status_code == 401


def test_catalog_and_projects(client: falcon.testing.TestClient) -> None:
    alice = token(client, "alice", "p1")
    types = {s["type"] for s in client.simulate_get(
        "/v3/auth/catalog", headers={"X-Auth-Token": alice}).json["catalog"]}
    assert types == {"compute", "volumev3", "image", "identity"}
    names = [p["name"] for p in client.simulate_get(
        "/v3/auth/projects", headers={"X-Auth-Token": alice}).json["projects"]]
    assert names == ["p1", "p2"]
    assert client.simulate_get("/v3/auth/projects").status_code == 401
    assert client.simulate_get("/v3/nothing").status_code == 404
    assert client.simulate_put("/v3/auth/tokens").json["error"]["code"] == 405


def test_local_auth_gives_the_token_s_context(client: falcon.testing.TestClient,
                                             ident: LocalIdentity) -> None:
    auth = LocalAuth(ident.tokens)
    ctx = auth.authenticate({"x-auth-token": token(client, "root", "admin")}, "req-1")
    assert ctx.is_admin and not ctx.is_service and ctx.roles == ("reader", "member", "admin")
    assert ctx.project_id == ident.store.project("admin").id
    for headers in ({}, {"x-auth-token": "alice:p1"}, {"x-auth-token": "tt1.\u00e9.x"}):
        with pytest.raises(ApiError) as err:
            auth.authenticate(headers, "req-2")
        assert err.value.status == 401
