"""The static Identity v3 version document served beside the Compute API."""

from __future__ import annotations

import pytest

from tests.harness import Tether


@pytest.mark.parametrize("path", ["/identity/v3", "/identity/v3/"])
def test_v3_document_needs_no_token(tether: Tether, path: str) -> None:
    res = tether.nova().client.simulate_get(path)
    assert res.status_code == 200
    v = res.json["version"]
    assert (v["id"], v["status"]) == ("v3.14", "stable")
    assert v["links"] == [{"rel": "self", "href": "http://falconframework.org/identity/v3/"}]


def test_root_lists_v3_with_300(tether: Tether) -> None:
    res = tether.nova().client.simulate_get("/identity")
    assert res.status_code == 300
    assert [v["id"] for v in res.json["versions"]["values"]] == ["v3.14"]


def test_nothing_else_of_keystone(tether: Tether) -> None:
    assert tether.nova().post("/identity/v3/auth/tokens", {}).status_code == 404
