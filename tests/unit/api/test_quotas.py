"""Quotas and limits of both APIs (tether/api/quotas.py, tether/quota.py):
the shapes Nova and Cinder answer, enforcement on create, the policies.
The harness's defaults are unlimited: each test sets its own project's."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from tests.harness import Api, Tether, wait_for
from tether.connectors.fake import FakeConnector
from tether.virt.fake import FakeDriver
from tether.volume.targets.fake import FakeTarget


def _project() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


def _admin(t: Tether, project: str, service: str) -> Api:
    return t.api(f"admin:{project}") if service == "volume" else t.nova(f"admin:{project}")


def _set(t: Tether, project: str, service: str, **limits: int) -> None:
    path = ("/v3/os-quota-sets/" if service == "volume" else "/v2.1/os-quota-sets/") + project
    res = _admin(t, project, service).put(path, {"quota_set": limits})
    assert res.status_code == 200, res.text


# -- Block Storage ------------------------------------------------------------

def test_volume_quota_show_defaults_and_usage(tether: Tether) -> None:
    p = _project()
    api = tether.api(f"alice:{p}")
    shown = api.get(f"/v3/os-quota-sets/{p}").json["quota_set"]
    assert shown["id"] == p
    assert shown["volumes"] == -1 and shown["gigabytes"] == -1  # the harness: unlimited
    assert shown["volumes___DEFAULT__"] == -1
    tether.create_volume(api, size=3)
    usage = api.get(f"/v3/{p}/os-quota-sets/{p}?usage=True").json["quota_set"]
    assert usage["volumes"] == {"limit": -1, "in_use": 1, "reserved": 0, "allocated": 0}
    assert usage["gigabytes"]["in_use"] == 3
    assert usage["gigabytes___DEFAULT__"]["in_use"] == 3
    defaults = api.get(f"/v3/os-quota-sets/{p}/defaults").json["quota_set"]
    assert defaults["volumes"] == -1 and defaults["id"] == p


def test_volume_quota_set_enforced_with_cinders_413(tether: Tether) -> None:
    p = _project()
    _set(tether, p, "volume", volumes=1, gigabytes=5)
    api = tether.api(f"alice:{p}")
    tether.create_volume(api, size=2)
    res = api.post("/v3/volumes", {"volume": {"size": 1}})
    assert res.status_code == 413, res.text
    message = res.json["overLimit"]["message"]
    assert "Maximum number of volumes allowed (1) exceeded for quota 'volumes'" in message
    _set(tether, p, "volume", volumes=5)
    res = api.post("/v3/volumes", {"volume": {"size": 4}})
    assert res.status_code == 413
    assert ("exceeds allowed gigabytes quota. Requested 4G, quota is 5G and 2G has been "
            "consumed") in res.json["overLimit"]["message"]
    assert api.post("/v3/volumes", {"volume": {"size": 3}}).status_code == 202
    limits = api.get("/v3/limits").json["limits"]
    assert limits["rate"] == []
    absolute = limits["absolute"]
    assert (absolute["maxTotalVolumes"], absolute["totalVolumesUsed"]) == (5, 2)
    assert (absolute["maxTotalVolumeGigabytes"], absolute["totalGigabytesUsed"]) == (5, 5)


def test_per_volume_gigabytes(tether: Tether) -> None:
    p = _project()
    _set(tether, p, "volume", per_volume_gigabytes=2)
    api = tether.api(f"alice:{p}")
    res = api.post("/v3/volumes", {"volume": {"size": 3}})
    assert res.status_code == 413
    assert "Requested volume size 3G is larger than maximum allowed limit 2G" in res.json[
        "overLimit"]["message"]
    tether.create_volume(api, size=2)


def test_deleted_volumes_give_their_quota_back(tether: Tether) -> None:
    p = _project()
    _set(tether, p, "volume", volumes=1)
    api = tether.api(f"alice:{p}")
    vid = tether.create_volume(api)["id"]
    assert api.post("/v3/volumes", {"volume": {"size": 1}}).status_code == 413
    assert api.delete(f"/v3/volumes/{vid}").status_code == 202
    wait_for(lambda: api.get(f"/v3/volumes/{vid}").status_code == 404, what="deleted")
    tether.create_volume(api)


def test_volume_quota_below_usage_is_400_and_delete_resets(tether: Tether) -> None:
    p = _project()
    api = tether.api(f"alice:{p}")
    tether.create_volume(api)
    tether.create_volume(api)
    admin = tether.api(f"admin:{p}")
    res = admin.put(f"/v3/os-quota-sets/{p}", {"quota_set": {"volumes": 1}})
    assert res.status_code == 400
    assert "limit of 1 must be greater than or equal to already used and reserved 2" in (
        res.json["badRequest"]["message"])
    res = admin.put(f"/v3/os-quota-sets/{p}", {"quota_set": {"tenant_id": p, "volumes": "2"}})
    assert res.status_code == 200 and res.json["quota_set"]["volumes"] == 2
    assert admin.delete(f"/v3/os-quota-sets/{p}").status_code == 200
    assert api.get(f"/v3/os-quota-sets/{p}").json["quota_set"]["volumes"] == -1


@pytest.mark.parametrize("body", [
    {"quota_set": {"volumes": -2}}, {"quota_set": {"volumes": "ten"}},
    {"quota_set": {"instances": 1}}, {"quota_set": {"volumes": 2**31}}, {"volumes": 1},
    {"quota_set": {"volumes": 1.5}},
])
def test_volume_quota_bad_bodies_are_400(tether: Tether, body: dict[str, object]) -> None:
    p = _project()
    res = tether.api(f"admin:{p}").put(f"/v3/os-quota-sets/{p}", body)
    assert res.status_code == 400, res.text
    assert "badRequest" in res.json


# -- Compute ------------------------------------------------------------------

def test_compute_quota_shapes(tether: Tether) -> None:
    p = _project()
    nova = tether.nova(f"alice:{p}")
    tether.create_server(nova)
    shown = nova.get(f"/v2.1/os-quota-sets/{p}").json["quota_set"]
    assert set(shown) == {"id", "instances", "cores", "ram", "metadata_items", "key_pairs",
                          "server_groups", "server_group_members"}
    old = tether.nova(f"alice:{p}", version="2.1").get(f"/v2.1/os-quota-sets/{p}").json[
        "quota_set"]
    assert {"injected_files", "floating_ips", "security_groups"} <= set(old)
    detail = nova.get(f"/v2.1/os-quota-sets/{p}/detail").json["quota_set"]
    assert detail["instances"] == {"limit": -1, "in_use": 1, "reserved": 0}
    assert detail["cores"]["in_use"] == 1 and detail["ram"]["in_use"] == 64
    assert nova.get(f"/v2.1/os-quota-sets/{p}/defaults").json["quota_set"]["instances"] == -1
    absolute = nova.get("/v2.1/limits").json["limits"]["absolute"]
    assert (absolute["maxTotalInstances"], absolute["totalInstancesUsed"]) == (-1, 1)
    assert (absolute["totalCoresUsed"], absolute["totalRAMUsed"]) == (1, 64)


def test_compute_quota_enforced_with_novas_403(tether: Tether) -> None:
    p = _project()
    _set(tether, p, "compute", instances=1)
    nova = tether.nova(f"alice:{p}")
    tether.create_server(nova)
    res = nova.post("/v2.1/servers", {"server": {"name": "two", "flavorRef": "1"}})
    assert res.status_code == 403, res.text
    assert res.json["forbidden"]["message"].startswith(
        "Quota exceeded for instances: Requested 1, but already used 1 of 1 instances")
    _set(tether, p, "compute", instances=5, cores=2)
    res = nova.post("/v2.1/servers", {"server": {"name": "big", "flavorRef": "4"}})
    assert res.status_code == 403
    assert "Quota exceeded for cores: Requested 2, but already used 1 of 2 cores" in res.json[
        "forbidden"]["message"]
    _set(tether, p, "compute", cores=-1, ram=100)
    res = nova.post("/v2.1/servers", {"server": {"name": "ram", "flavorRef": "2"}})
    assert res.status_code == 403 and "Quota exceeded for ram" in res.json["forbidden"][
        "message"]
    assert len(nova.get("/v2.1/servers").json["servers"]) == 1  # nothing of the refused


def test_compute_quota_force_and_delete(tether: Tether) -> None:
    p = _project()
    tether.create_server(tether.nova(f"alice:{p}"))
    admin = tether.nova(f"admin:{p}")
    res = admin.put(f"/v2.1/os-quota-sets/{p}", {"quota_set": {"instances": 0}})
    assert res.status_code == 400
    assert "Quota limit 0 for instances must be greater than or equal to already used" in (
        res.json["badRequest"]["message"])
    res = admin.put(f"/v2.1/os-quota-sets/{p}", {"quota_set": {"instances": 0,
                                                                "force": True}})
    assert res.status_code == 200 and res.json["quota_set"]["instances"] == 0
    assert admin.delete(f"/v2.1/os-quota-sets/{p}").status_code == 202
    assert admin.get(f"/v2.1/os-quota-sets/{p}").json["quota_set"]["instances"] == -1


# (rule, service, method, path, who, status): "own" is the caller's project,
# "other" another one; who: reader, member or admin of the caller's project
_POLICY_CASES = [
    ("volume_extension:quotas:show", "volume", "GET", "/v3/os-quota-sets/own", "reader", 200),
    ("volume_extension:quotas:show", "volume", "GET", "/v3/os-quota-sets/own/defaults",
     "reader", 200),
    ("volume_extension:quotas:show", "volume", "GET", "/v3/os-quota-sets/other", "member",
     403),
    ("volume_extension:quotas:show", "volume", "GET", "/v3/os-quota-sets/other", "admin",
     200),
    ("volume_extension:quotas:update", "volume", "PUT", "/v3/os-quota-sets/own", "member",
     403),
    ("volume_extension:quotas:update", "volume", "PUT", "/v3/os-quota-sets/other", "admin",
     200),
    ("volume_extension:quotas:delete", "volume", "DELETE", "/v3/os-quota-sets/own", "member",
     403),
    ("volume_extension:quotas:delete", "volume", "DELETE", "/v3/os-quota-sets/own", "admin",
     200),
    ("limits_extension:used_limits", "volume", "GET", "/v3/limits", "reader", 200),
    ("os_compute_api:os-quota-sets:show", "compute", "GET", "/v2.1/os-quota-sets/own",
     "reader", 200),
    ("os_compute_api:os-quota-sets:show", "compute", "GET", "/v2.1/os-quota-sets/other",
     "member", 403),
    ("os_compute_api:os-quota-sets:detail", "compute", "GET",
     "/v2.1/os-quota-sets/own/detail", "reader", 200),
    ("os_compute_api:os-quota-sets:detail", "compute", "GET",
     "/v2.1/os-quota-sets/other/detail", "member", 403),
    ("os_compute_api:os-quota-sets:defaults", "compute", "GET",
     "/v2.1/os-quota-sets/other/defaults", "reader", 200),
    ("os_compute_api:os-quota-sets:update", "compute", "PUT", "/v2.1/os-quota-sets/own",
     "member", 403),
    ("os_compute_api:os-quota-sets:update", "compute", "PUT", "/v2.1/os-quota-sets/other",
     "admin", 200),
    ("os_compute_api:os-quota-sets:delete", "compute", "DELETE", "/v2.1/os-quota-sets/own",
     "member", 403),
    ("os_compute_api:os-quota-sets:delete", "compute", "DELETE", "/v2.1/os-quota-sets/own",
     "admin", 202),
    ("os_compute_api:limits", "compute", "GET", "/v2.1/limits", "reader", 200),
    ("os_compute_api:limits:other_project", "compute", "GET", "/v2.1/limits?tenant_id=own",
     "reader", 200),
    ("os_compute_api:limits:other_project", "compute", "GET",
     "/v2.1/limits?tenant_id=other", "member", 403),
    ("os_compute_api:limits:other_project", "compute", "GET",
     "/v2.1/limits?tenant_id=other", "admin", 200),
    ("identity:get_project", "compute", "GET", "/identity/v3/projects/own", "reader", 200),
    ("identity:get_project", "compute", "GET", "/identity/v3/projects/other", "member", 403),
    ("identity:get_project", "compute", "GET", "/identity/v3/projects/other", "admin", 200),
    ("identity:list_projects", "compute", "GET", "/identity/v3/projects?name=own", "member",
     403),
    ("identity:list_projects", "compute", "GET", "/identity/v3/projects?name=own", "admin",
     200),
]


@pytest.mark.parametrize(("rule", "service", "method", "path", "who", "status"),
                         _POLICY_CASES, ids=str)
def test_quota_policies(tether: Tether, rule: str, service: str, method: str, path: str,
                        who: str, status: int) -> None:
    """Readers see their own project's quotas, only admins change them or
    see another project's (``rule`` names the rule the case exercises)."""
    own, other = _project(), _project()
    token = {"reader": f"rita:{own}:reader", "member": f"alice:{own}",
             "admin": f"admin:{own}"}[who]
    api = tether.api(token) if service == "volume" else tether.nova(token)
    path = path.replace("own", own).replace("other", other)
    key = "instances" if service == "compute" else "volumes"
    body = {"quota_set": {key: 3}} if method == "PUT" else None
    res = {"GET": lambda: api.get(path), "DELETE": lambda: api.delete(path),
           "PUT": lambda: api.put(path, body)}[method]()
    assert res.status_code == status, (rule, res.text)


def test_max_disk_devices_to_attach(tmp_path: Path) -> None:
    """[compute] max_disk_devices_to_attach = 1: the second attach is 403,
    and nothing of it stays."""
    t = Tether(str(tmp_path), FakeTarget(), FakeDriver(), FakeConnector(),
               overrides={"compute": {"max_disk_devices_to_attach": 1}})
    try:
        nova, cinder, sid, vid = t.server_with_volume()
        second = t.create_volume(cinder)["id"]
        res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                        {"volumeAttachment": {"volumeId": second}})
        assert res.status_code == 403, res.text
        assert "maximum allowed number of disk devices (1)" in res.json["forbidden"]["message"]
        assert cinder.get(f"/v3/volumes/{second}").json["volume"]["status"] == "available"
        assert [a["volumeId"] for a in nova.get(
            f"/v2.1/servers/{sid}/os-volume_attachments").json["volumeAttachments"]] == [vid]
    finally:
        t.stop()


@pytest.mark.parametrize("service", ["volume", "compute"])
def test_six_concurrent_creates_with_room_for_one(tether: Tether, service: str) -> None:
    """Through the API (SQLite): one 202, five over quota, one row."""
    p = _project()
    if service == "volume":
        _set(tether, p, "volume", volumes=1)
        api = tether.api(f"alice:{p}")
        path, body, refused = "/v3/volumes", {"volume": {"size": 1}}, 413
    else:
        _set(tether, p, "compute", instances=1)
        api = tether.nova(f"alice:{p}")
        path, body, refused = "/v2.1/servers", {"server": {"name": "r", "flavorRef": "1"}}, 403
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def create() -> None:
        barrier.wait(timeout=30)
        codes.append(api.post(path, body).status_code)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(codes) == [202] + [refused] * 5
    listed = api.get(path).json["volumes" if service == "volume" else "servers"]
    assert len(listed) == 1


def test_project_lookup_for_openstack_quota(tether: Tether) -> None:
    """What ``openstack quota show/set PROJECT`` asks first: the project by
    id, then (an admin) by name; a project is named by its id."""
    p = _project()
    nova = tether.nova(f"admin:{p}")
    project = nova.get(f"/identity/v3/projects/{p}").json["project"]
    assert (project["id"], project["name"], project["enabled"]) == (p, p, True)
    assert [x["id"] for x in nova.get(f"/identity/v3/projects?name={p}").json[
        "projects"]] == [p]
    assert nova.get("/identity/v3/projects").json["projects"] == []


def test_two_concurrent_attaches_with_room_for_one_disk(tmp_path: Path) -> None:
    """The attach's claim transaction begins with the server's guard UPDATE,
    so the second counts the first's mapping: one attach, one 403."""
    t = Tether(str(tmp_path), FakeTarget(), FakeDriver(), FakeConnector(),
               overrides={"compute": {"max_disk_devices_to_attach": 1}})
    try:
        nova, cinder = t.nova(), t.api()
        sid = t.create_server(nova)["id"]
        vids = [t.create_volume(cinder)["id"] for _ in range(2)]
        barrier = threading.Barrier(2)
        codes: list[int] = []

        def attach(vid: str) -> None:
            barrier.wait(timeout=30)
            codes.append(nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                                   {"volumeAttachment": {"volumeId": vid}}).status_code)

        threads = [threading.Thread(target=attach, args=(v,)) for v in vids]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert sorted(codes) == [200, 403]
        t.wait_action(nova, sid, "attach_volume")
        assert len(nova.get(f"/v2.1/servers/{sid}/os-volume_attachments").json[
            "volumeAttachments"]) == 1
        assert sorted(cinder.get(f"/v3/volumes/{v}").json["volume"]["status"]
                      for v in vids) == ["available", "in-use"]
    finally:
        t.stop()
