"""Each API's OpenAPI document and its routes agree, both ways: every method a
route serves is documented, every documented operation is routed; and the
document is what GET /openapi.json serves, without a token."""

from __future__ import annotations

import falcon
import falcon.inspect
import pytest
from openapi_spec_validator import validate

from tests.harness import Tether
from tether.api import block_storage, compute, openapi


def _routed(app: falcon.App) -> set[tuple[str, str]]:
    return {(route.path, m.method) for route in falcon.inspect.inspect_routes(app)
            for m in route.methods if not m.internal}


def _documented(doc: dict[str, object]) -> set[tuple[str, str]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {(path, method.upper()) for path, ops in paths.items() for method in ops}


def _apps(tether: Tether) -> dict[str, falcon.App]:
    return {"compute": tether.compute_app, "volume": tether.volume_app}


@pytest.mark.parametrize("api", ["compute", "volume"])
def test_document_matches_routes_both_ways(tether: Tether, api: str) -> None:
    app = _apps(tether)[api]
    doc = falcon.testing.TestClient(app).simulate_get(openapi.PATH).json
    routed, documented = _routed(app), _documented(doc)
    assert routed - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routed == set(), "documented operations nobody routes"


@pytest.mark.parametrize("api", ["compute", "volume"])
def test_document_is_valid_openapi(tether: Tether, api: str) -> None:
    validate(falcon.testing.TestClient(_apps(tether)[api]).simulate_get(openapi.PATH).json)


@pytest.mark.parametrize("api", ["compute", "volume"])
def test_path_parameters_are_the_route_fields(tether: Tether, api: str) -> None:
    doc = falcon.testing.TestClient(_apps(tether)[api]).simulate_get(openapi.PATH).json
    for route in falcon.inspect.inspect_routes(_apps(tether)[api]):
        fields = {part[1:-1] for part in route.path.split("/") if part.startswith("{")}
        for op in doc["paths"][route.path].values():
            assert {p["name"] for p in op["parameters"] if p["in"] == "path"} == fields


def test_public_operations_are_the_ones_served_without_a_token(tether: Tether) -> None:
    for ops, app in ((compute.OPERATIONS, tether.compute_app),
                     (block_storage.OPERATIONS, tether.volume_app)):
        client = falcon.testing.TestClient(app)
        for op in ops:
            if op.method != "GET" or "{" in op.path:
                continue
            status = client.simulate_get(op.path).status_code
            assert (status != 401) == op.public, (op.path, status)
            if op.public:
                assert status == op.status, op.path


def test_minimum_microversions_are_enforced(tether: Tether) -> None:
    api = tether.api(version="3.26")
    for op in block_storage.OPERATIONS:
        if op.since and op.method == "GET" and "{" not in op.path:
            assert api.get(op.path).status_code == 404, op.path
            assert api.as_version(op.since).get(op.path).status_code == op.status, op.path


def test_document_shape(tether: Tether) -> None:
    doc = tether.api().client.simulate_get(openapi.PATH).json
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["version"] == "3.71"
    assert doc["servers"] == [{"url": "http://falconframework.org"}]
    delete = doc["paths"]["/v3/attachments/{attachment_id}"]["delete"]
    assert delete["x-openstack-min-microversion"] == "3.27"
    assert "200" in delete["responses"] and "404" in delete["responses"]
    create = doc["paths"]["/v3/volumes"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["required"] == [
        "volume"]


def test_bodies_and_queries_are_the_real_schemas(tether: Tether) -> None:
    """Not placeholders: the published schema refuses what the API refuses."""
    from jsonschema import Draft202012Validator

    doc = tether.api().client.simulate_get(openapi.PATH).json
    create = doc["paths"]["/v3/volumes"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert not Draft202012Validator(create).is_valid({"volume": {"size": "²"}})
    assert Draft202012Validator(create).is_valid({"volume": {"size": 1}})
    limit = next(p for p in doc["paths"]["/v3/volumes"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"]["type"] == "integer"
    nova = tether.nova().client.simulate_get(openapi.PATH).json
    attach = nova["paths"]["/v2.1/servers/{server_id}/os-volume_attachments"]["post"][
        "requestBody"]
    assert [v["since"] for v in attach["x-openstack-microversions"]] == ["2.1", "2.49", "2.79"]
