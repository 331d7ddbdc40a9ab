"""The one volume type, __DEFAULT__, that every volume says it is of."""

from __future__ import annotations

import pytest

from tests.harness import Tether
from tether.api import volume_types


def test_list_and_show_by_id_or_name(tether: Tether) -> None:
    api = tether.api()
    types = api.get("/v3/types").json["volume_types"]
    assert [(t["id"], t["name"]) for t in types] == [(volume_types.ID, "__DEFAULT__")]
    for key in (volume_types.ID, "__DEFAULT__"):
        assert api.get(f"/v3/types/{key}").json["volume_type"]["id"] == volume_types.ID
    assert api.get(f"/v3/types/{volume_types.ID}/extra_specs").json == {"extra_specs": {}}
    assert api.get("/v3/types/gold").status_code == 404


def test_default_from_362(tether: Tether) -> None:
    assert tether.api(version="3.61").get("/v3/types/default").status_code == 404
    assert tether.api(version="3.62").get("/v3/types/default").json["volume_type"][
        "name"] == "__DEFAULT__"


@pytest.mark.parametrize("given", ["__DEFAULT__", volume_types.ID, "", None])
def test_volumes_name_their_type(tether: Tether, given: str | None) -> None:
    vol = tether.create_volume(tether.api(), volume_type=given)
    assert (vol["volume_type"], vol["volume_type_id"]) == ("__DEFAULT__", volume_types.ID)
    assert "volume_type_id" not in tether.api(version="3.62").get(
        f"/v3/volumes/{vol['id']}").json["volume"]


@pytest.mark.parametrize("name", ["gold", "lvmdriver-1"])
def test_create_with_an_unknown_type_is_404(tether: Tether, name: str) -> None:
    res = tether.api().post("/v3/volumes", {"volume": {"size": 1, "volume_type": name}})
    assert res.status_code == 404
    assert "__DEFAULT__" in res.json["itemNotFound"]["message"]
