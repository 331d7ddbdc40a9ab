"""tether/policy.py and tether/policies: every route has a rule, the rules'
operations are real routes, docs/policy.md is current, the personas get what
Nova/Cinder give them, and a policy file overrides a default."""

from __future__ import annotations

import os
import re
from pathlib import Path

import falcon
import falcon.testing
import pytest
from falcon import inspect

from tests.harness import Tether
from tether import config, policy
from tether.cli import main
from tether.context import RequestContext
from tether.policies import PUBLIC, doc, list_rules

ACTION = re.compile(r" \(.*\)$")


def _app_routes(app: falcon.App) -> set[tuple[str, str]]:
    return {(m.method, route.path) for route in inspect.inspect_routes(app)
            for m in route.methods if not m.internal and m.method != "OPTIONS"}


def _apps(t: Tether) -> list[falcon.App]:
    return [t.compute_app, t.volume_app, t.image_app]


def _routes(t: Tether) -> set[tuple[str, str]]:
    """(method, path) of every route of the compute, volume and image apps."""
    return set().union(*(_app_routes(app) for app in _apps(t)))


def test_every_route_has_a_rule_or_is_public(tether: Tether) -> None:
    ruled = {(m, ACTION.sub("", p)) for m, p in doc.endpoints()}
    missing = sorted(r for r in _routes(tether) if r not in ruled
                     and not (r[0] == "GET" and r[1] in PUBLIC))
    assert not missing, f"routes without a policy rule: {missing}"


def test_every_rule_operation_is_a_route(tether: Tether) -> None:
    routes = _routes(tether)
    stale = sorted((m, p) for m, p in doc.endpoints() if (m, ACTION.sub("", p)) not in routes)
    assert not stale, f"rules document routes that do not exist: {stale}"


def test_public_means_no_token_and_the_rest_needs_one(tether: Tether) -> None:
    for app in _apps(tether):
        client = falcon.testing.TestClient(app)
        for method, path in sorted(_app_routes(app)):
            res = client.simulate_request(method, re.sub(r"\{[^}]+\}", "x", path))
            if method == "GET" and path in PUBLIC:
                assert res.status_code < 400, (method, path, res.status_code)
            else:
                assert res.status_code == 401, (method, path, res.status_code)


def test_docs_policy_md_is_current() -> None:
    assert main(["policy", "check"]) == 0, "run `tether policy doc` and commit docs/policy.md"


def test_policy_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    stale = tmp_path / "policy.md"
    stale.write_text("# Policy\n")
    assert main(["policy", "check", "--output", str(stale)]) == 1
    assert main(["policy", "doc", "--output", str(stale)]) == 0
    assert main(["policy", "check", "--output", str(stale)]) == 0


def test_generate_lists_every_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "generate"]) == 0
    out = capsys.readouterr().out
    for name in ("os_compute_api:os-volumes-attachments:delete",
                 "volume_extension:volume_actions:detach", "tether:volume:see_chap_secret"):
        assert f'#"{name}":' in out


READER = RequestContext("rita", "p1", ("reader",))
MEMBER = RequestContext("alice", "p1", ("member",))
OTHER = RequestContext("oscar", "p2", ("member", "reader"))
ADMIN = RequestContext("admin", "admin", ("admin",), is_admin=True)
SERVICE = RequestContext("svc", "service", ("service",), is_service=True)


@pytest.mark.parametrize(("rule", "expect"), [
    # reader / member / other project's member / admin / service
    ("volume:get", (True, True, False, True, False)),
    ("volume:delete", (False, True, False, True, False)),
    ("volume_extension:volume_actions:detach", (False, True, False, True, False)),
    ("volume_extension:volume_admin_actions:force_detach", (False, False, False, True, False)),
    ("tether:volume:see_chap_secret", (False, False, False, True, True)),
    ("os_compute_api:servers:show", (True, True, False, True, False)),
    ("os_compute_api:os-volumes-attachments:delete", (False, True, False, True, False)),
    ("os_compute_api:os-shelve:shelve_offload", (False, False, False, True, False)),
    ("tether:compute:flavors", (True, True, True, True, True)),
])
def test_personas_on_a_p1_resource(rule: str, expect: tuple[bool, ...]) -> None:
    got = tuple(policy.allowed(c, rule, "p1") for c in (READER, MEMBER, OTHER, ADMIN, SERVICE))
    assert got == expect


def test_implied_roles() -> None:
    assert policy.roles_with_implied(["admin"]) == ["admin", "member", "reader"]
    assert "auth_token" not in policy.credentials(MEMBER)


def test_unknown_rule_is_a_programming_error() -> None:
    with pytest.raises(KeyError):
        policy.authorize(MEMBER, "volume:nonesuch")


def test_policy_file_overrides_and_is_reread(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('"volume:get": "role:admin"\n')
    conf = config.load(state_dir=str(tmp_path),
                       overrides={"oslo_policy": {"policy_file": str(path)}})
    try:
        policy.init(conf)
        assert not policy.allowed(MEMBER, "volume:get", "p1")
        assert policy.allowed(ADMIN, "volume:get", "p1")
        path.write_text('{"volume:get": "@", "volume:delete": "!"}')
        later = path.stat().st_mtime + 10  # newer, whatever the clock's resolution
        os.utime(path, (later, later))
        assert policy.allowed(OTHER, "volume:get", "p1")
        assert not policy.allowed(ADMIN, "volume:delete", "p1")
    finally:
        policy.init(config.load(state_dir=str(tmp_path)))
    assert policy.allowed(MEMBER, "volume:get", "p1")


def test_admin_only_fields_and_all_projects(tether: Tether) -> None:
    """Rules that shape a response rather than allow a request (admin only)."""
    covers = ("volume_extension:volume_host_attribute", "tether:volume:all_projects",
              "os_compute_api:os-extended-server-attributes",
              "os_compute_api:servers:detail:get_all_tenants",
              "os_compute_api:os-lock-server:unlock:unlock_override",
              "os_compute_api:os-flavor-extra-specs:show")
    assert set(covers) <= {r.name for r in list_rules()}  # (named: docs/policy.md)
    member, admin, other = tether.api("mia:pp1"), tether.api("admin:pp1"), tether.api("oz:pp2")
    vid = tether.create_volume(member)["id"]
    assert "os-vol-host-attr:host" not in member.get(f"/v3/volumes/{vid}").json["volume"]
    assert "os-vol-host-attr:host" in admin.get(f"/v3/volumes/{vid}").json["volume"]
    for path in ("/v3/volumes/detail", "/v3/volumes"):
        mine = {v["id"] for v in other.get(path + "?all_tenants=1").json["volumes"]}
        every = {v["id"] for v in admin.get(path + "?all_tenants=1").json["volumes"]}
        assert vid not in mine and vid in every
    assert all("os-vol-host-attr:host" not in v for v in member.get(
        "/v3/volumes/detail").json["volumes"])
    for path in ("/v3/attachments", "/v3/attachments/detail"):
        assert other.get(path + "?all_tenants=1").status_code == 200
    nova, nova_admin = tether.nova("mia:pp1"), tether.nova("admin:pp1")
    sid = tether.create_server(nova)["id"]
    assert "OS-EXT-SRV-ATTR:host" not in nova.get(f"/v2.1/servers/{sid}").json["server"]
    assert "OS-EXT-SRV-ATTR:host" in nova_admin.get(f"/v2.1/servers/{sid}").json["server"]
    assert all("OS-EXT-SRV-ATTR:host" not in s for s in nova.get(
        "/v2.1/servers/detail").json["servers"])
    assert nova.get("/v2.1/servers/detail?all_tenants=1").status_code == 403
    assert sid in {s["id"] for s in nova_admin.get(
        "/v2.1/servers/detail?all_tenants=1").json["servers"]}
    # os_compute_api:os-lock-server:unlock:unlock_override: an admin's lock holds
    assert nova_admin.post(f"/v2.1/servers/{sid}/action", {"lock": None}).status_code == 202
    assert nova.post(f"/v2.1/servers/{sid}/action", {"unlock": None}).status_code == 409
    assert nova_admin.post(f"/v2.1/servers/{sid}/action", {"unlock": None}).status_code == 202
    # os_compute_api:os-flavor-extra-specs:show: allowed, then not found
    reader = tether.nova("rita:pp1:reader")
    res = reader.get("/v2.1/flavors/1/os-extra_specs/k")
    assert res.status_code == 404 and "no extra specs" in res.text


@pytest.mark.parametrize(("rule", "expect"), [
    ("os_compute_api:os-instance-actions:events", (False, False, False, True, False)),
    ("os_compute_api:os-flavor-extra-specs:show", (True, True, False, True, False)),
])
def test_personas_on_detail_rules(rule: str, expect: tuple[bool, ...]) -> None:
    got = tuple(policy.allowed(c, rule, "p1") for c in (READER, MEMBER, OTHER, ADMIN, SERVICE))
    assert got == expect
