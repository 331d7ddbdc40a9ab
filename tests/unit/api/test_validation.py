"""Request validation: every handler that takes a body is validated by the
schema its OpenAPI operation publishes; what used to give 500s gives 400s
naming the field; bodies over the limit are 413s; ``?name=`` is matched in
linear time."""

from __future__ import annotations

import re
import time
from typing import Any

import falcon
import falcon.inspect
import pytest

from tests.harness import Tether
from tether.api import block_storage, compute, validation
from tether.api.openapi import Operation
from tether.api.validation import validation_of

_BODY_METHODS = ("POST", "PUT", "PATCH")


def _responders(app: falcon.App) -> dict[tuple[str, str], Any]:
    """(route template, method) -> the responder falcon calls for it."""
    found = {}
    for route in falcon.inspect.inspect_routes(app):
        concrete = re.sub(r"{[a-z_]+}", "x", route.path)
        resource, methods, _, _ = app._router.find(concrete)
        assert resource is not None, route.path
        for m in route.methods:
            if not m.internal:
                found[(route.path, m.method)] = methods[m.method]
    return found


def _apps(tether: Tether) -> list[tuple[falcon.App, tuple[Operation, ...]]]:
    return [(tether.compute_app, compute.OPERATIONS),
            (tether.volume_app, block_storage.OPERATIONS)]


def test_every_handler_that_takes_a_body_is_validated(tether: Tether) -> None:
    unvalidated = []
    for app, _ in [*_apps(tether), (tether.image_app, ())]:
        for (path, method), responder in _responders(app).items():
            checked = validation_of(responder)
            if method in _BODY_METHODS and (checked is None or checked.body is None):
                unvalidated.append(f"{method} {path}")
    assert unvalidated == []


def test_openapi_publishes_the_schemas_the_handlers_enforce(tether: Tether) -> None:
    for app, operations in _apps(tether):
        responders = _responders(app)
        for op in operations:
            checked = validation_of(responders[(op.path, op.method)])
            assert (checked.body if checked else None) is op.body, (op.method, op.path)
            assert (checked.query if checked else None) is op.query, (op.method, op.path)


def _fault(res: Any, status: int) -> str:
    assert res.status_code == status, res.text
    (fault,) = res.json.values()
    assert fault["code"] == status
    message: str = fault["message"]
    return message


@pytest.mark.parametrize(("body", "field"), [
    ({"volume": {"size": "²"}}, "size"),
    ({"volume": {"size": 0}}, "size"),
    ({"volume": {"size": True}}, "size"),
    ({"volume": {"size": 1, "name": 7}}, "name"),
    ({"volume": {"size": 1, "metadata": {"k": 1}}}, "k"),
    ({"volume": {"size": 1, "bogus": 1}}, "volume"),
    ({"volume": {}}, "volume"),
    ({"volume": []}, "volume"),
])
def test_volume_create_names_the_field(tether: Tether, body: Any, field: str) -> None:
    message = _fault(tether.api().post("/v3/volumes", body), 400)
    assert f"field/attribute {field}" in message


def test_the_value_is_quoted_back_as_nova_does(tether: Tether) -> None:
    message = _fault(tether.api().post("/v3/volumes", {"volume": {"size": "²"}}), 400)
    assert message.startswith("Invalid input for field/attribute size. Value: ².")


def test_a_long_value_is_quoted_back_short(tether: Tether) -> None:
    message = _fault(tether.api().post("/v3/volumes", {"volume": {"size": "9" * 5000}}), 400)
    assert len(message) < 1000


@pytest.mark.parametrize("query", ["limit=²", "limit=-1", "limit=1e3", "limit=",
                                   "all_tenants=maybe", "marker=" + "m" * 300])
def test_query_parameters_are_checked(tether: Tether, query: str) -> None:
    res = tether.api().client.simulate_get("/v3/volumes", query_string=query, headers={
        "X-Auth-Token": "alice:p1"})
    assert "query parameters" in _fault(res, 400)


@pytest.mark.parametrize("path", ["/v3/volumes/x/action"])
@pytest.mark.parametrize("name", ["__class__", "_os_reserve", "os_reserve", "__init__",
                                  "on_post", "é"])
def test_unknown_volume_actions_are_400(tether: Tether, path: str, name: str) -> None:
    message = _fault(tether.api().post(path, {name: {}}), 400)
    assert message.startswith(f"There is no such action: {name}; expected one of os-reserve")


@pytest.mark.parametrize("name", ["__class__", "power_action", "os-reboot"])
def test_unknown_server_actions_are_400(tether: Tether, name: str) -> None:
    sid = tether.create_server(tether.nova(), "act")["id"]
    _fault(tether.nova().post(f"/v2.1/servers/{sid}/action", {name: None}), 400)


def test_an_action_body_has_one_member(tether: Tether) -> None:
    api = tether.api()
    _fault(api.post("/v3/volumes/x/action", {}), 400)
    _fault(api.post("/v3/volumes/x/action", {"os-reserve": None, "os-unreserve": None}), 400)
    _fault(api.post("/v3/volumes/x/action", {"os-attach": []}), 400)


def test_all_tenants_alone_means_yes(tether: Tether) -> None:
    res = tether.nova("admin:admin").client.simulate_get(
        "/v2.1/servers", query_string="all_tenants", headers={"X-Auth-Token": "admin:admin"})
    assert res.status_code == 200, res.text


def test_non_ascii_token_is_401(tether: Tether) -> None:
    res = tether.api().client.simulate_get("/v3/volumes", headers={"X-Auth-Token": "é:p"})
    _fault(res, 401)


@pytest.mark.parametrize(("version", "status"), [("2.48", 400), ("2.49", 200)])
def test_attach_tag_follows_the_microversion(tether: Tether, version: str,
                                             status: int) -> None:
    nova = tether.nova(version=version)
    sid = tether.create_server(nova, "tag")["id"]
    vid = tether.create_volume(tether.api())["id"]
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid, "tag": "data"}})
    assert res.status_code == status, res.text
    if status == 400:
        assert "tag" in _fault(res, 400)
    else:
        tether.wait_action(nova, sid, "attach_volume")


def test_attachment_mode_needs_3_54(tether: Tether) -> None:
    vid = tether.create_volume(tether.api())["id"]
    body = {"attachment": {"volume_uuid": vid, "mode": "ro"}}
    assert "mode" in _fault(tether.api(version="3.53").post("/v3/attachments", body), 400)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,", b"\xff\xfe", b"[" * 100000])
def test_malformed_bodies_are_400(tether: Tether, raw: bytes) -> None:
    res = tether.api().client.simulate_post("/v3/volumes", body=raw, headers={
        "X-Auth-Token": "alice:p1", "Content-Type": "application/json"})
    _fault(res, 400)


def test_a_body_over_the_limit_is_413_before_it_is_read(tether: Tether) -> None:
    limit = validation.DEFAULT_MAX_BODY
    big = b'{"volume": {"size": 1, "name": "' + b"x" * limit + b'"}}'
    res = tether.api().client.simulate_post("/v3/volumes", body=big, headers={
        "X-Auth-Token": "alice:p1", "Content-Type": "application/json"})
    assert "max_request_body_size" in _fault(res, 413)


def test_a_body_of_exactly_the_limit_is_read(tether: Tether) -> None:
    limit = validation.DEFAULT_MAX_BODY
    head, tail = b'{"volume": {"size": 1}', b'}'
    body = head + b" " * (limit - len(head) - len(tail)) + tail
    assert len(body) == limit
    res = tether.api().client.simulate_post("/v3/volumes", body=body, headers={
        "X-Auth-Token": "alice:p1", "Content-Type": "application/json"})
    assert res.status_code == 202, res.text


@pytest.mark.parametrize("pattern", ["(", "[", "(?=a)", "(a)\\1", "x" * 256])
def test_invalid_name_patterns_are_400(tether: Tether, pattern: str) -> None:
    res = tether.nova().client.simulate_get("/v2.1/servers", params={"name": pattern},
                                            headers={"X-Auth-Token": "alice:p1"})
    assert "name" in _fault(res, 400)


def test_a_catastrophic_pattern_answers_at_once(tether: Tether) -> None:
    """``(a|aa)+$`` takes Python's ``re`` exponential time on a long run of
    a's ending in b; RE2 is linear."""
    nova = tether.nova("redos:p-redos")
    for n in range(3):
        tether.create_server(nova, "a" * (60 + n) + "b")
    started = time.monotonic()
    res = nova.client.simulate_get("/v2.1/servers", params={"name": "(a|aa)+$"},
                                   headers={"X-Auth-Token": "redos:p-redos"})
    assert res.status_code == 200, res.text
    assert res.json["servers"] == []
    assert time.monotonic() - started < 1.0
    found = nova.client.simulate_get("/v2.1/servers", params={"name": "^a+b$"},
                                     headers={"X-Auth-Token": "redos:p-redos"})
    assert len(found.json["servers"]) == 3
