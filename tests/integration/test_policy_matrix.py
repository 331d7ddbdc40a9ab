"""The policy matrix on a real ``tether serve`` (real tgtd, libvirtd + QEMU):
for each endpoint family, what a project's reader, its member, another
project's member, an admin and Tether's service get: allowed, 403 (the role
may not) or 404 (another project's resource is hidden), as Nova and Cinder
answer.  Then a rule changed in the policy file takes effect while serving,
and CVE-2023-2088: a member's (or an admin's) storage-side detach of a volume
a real guest still uses is refused on every path with nothing changed, while
Nova's own detach (with the service token) works.

Requests that would change what other rows rely on are made so that policy
passes and the service then refuses for the resource's state (400/409): the
matrix asks only whether policy let the request through."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import wait_for
from tests.integration import serve as serve_mod
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve, tether_serve
from tests.integration.stack import domain_xml

TAG = uuid.uuid4().hex[:6]
P, Q = f"pm-{TAG}-p", f"pm-{TAG}-q"
READER, MEMBER, OTHER, ADMIN = f"rita:{P}:reader", f"mia:{P}", f"oscar:{Q}", "admin:admin"
PERSONAS = ("reader", "member", "other", "admin", "service")

# expected per persona, in PERSONAS order: A allowed (policy let it through;
# the service may still refuse for the state: 400/409), F 403, N 404, - not tried
V, W = "/v3/volumes/{V}", "/v3/volumes/{W}"
S = "/v2.1/servers/{S}"
BOOT_W = {"server": {"name": "pm", "flavorRef": "1", "block_device_mapping_v2": [
    {"boot_index": 0, "uuid": "{W}", "source_type": "volume",
     "destination_type": "volume"}]}}
MATRIX: list[tuple[str, str, str, Any, str]] = [
    # block storage: volumes ({V} available, {W} attached to {S})
    ("volume:get_all", "GET", "/v3/volumes", None, "AAAAA"),
    ("volume:get_all", "GET", "/v3/volumes/detail", None, "AAAAA"),
    ("volume:create", "POST", "/v3/volumes", {"volume": {"size": 1}}, "FAAAA"),
    ("volume:get", "GET", V, None, "AANAA"),
    ("volume:update", "PUT", V, {"volume": {"description": "x"}}, "FANAA"),
    ("volume:delete", "DELETE", W, None, "FANAA"),
    ("volume_extension:volume_actions:reserve", "POST", W + "/action",
     {"os-reserve": {}}, "FANAA"),
    ("volume_extension:volume_actions:unreserve", "POST", W + "/action",
     {"os-unreserve": {}}, "FANAA"),
    ("volume_extension:volume_actions:begin_detaching", "POST", V + "/action",
     {"os-begin_detaching": {}}, "FANAA"),
    ("volume_extension:volume_actions:roll_detaching", "POST", V + "/action",
     {"os-roll_detaching": {}}, "FANAA"),
    ("volume_extension:volume_actions:initialize_connection", "POST", V + "/action",
     {"os-initialize_connection": {"connector": {"initiator": "iqn.2026-01.x:none"}}},
     "FANAA"),
    ("volume_extension:volume_actions:terminate_connection", "POST", W + "/action",
     {"os-terminate_connection": {"connector": {"initiator": "iqn.2026-01.x:none"}}},
     "FANAA"),
    ("volume_extension:volume_actions:attach", "POST", V + "/action",
     {"os-attach": {"instance_uuid": str(uuid.uuid4())}}, "FANAA"),
    ("volume_extension:volume_actions:detach", "POST", V + "/action", {"os-detach": {}},
     "FANAA"),
    ("volume_extension:volume_admin_actions:reset_status", "POST", V + "/action",
     {"os-reset_status": {"status": "bogus"}}, "FFNAA"),
    ("volume_extension:volume_admin_actions:force_detach", "POST", V + "/action",
     {"os-force_detach": {}}, "FFNAA"),
    ("volume_extension:type_get_all", "GET", "/v3/types", None, "AAAAA"),
    ("volume_extension:type_get", "GET", "/v3/types/__DEFAULT__", None, "AAAAA"),
    ("volume_extension:types_extra_specs:index", "GET", "/v3/types/__DEFAULT__/extra_specs",
     None, "AAAAA"),
    # block storage: attachments ({A}: {W}'s, to {S})
    ("tether:volume:attachment_get_all", "GET", "/v3/attachments", None, "AAAAA"),
    ("tether:volume:attachment_get_all", "GET", "/v3/attachments/detail", None, "AAAAA"),
    ("tether:volume:attachment_get", "GET", "/v3/attachments/{A}", None, "AANAA"),
    ("volume:attachment_create", "POST", "/v3/attachments",
     {"attachment": {"volume_uuid": "{W}"}}, "FANAA"),
    ("volume:attachment_update", "PUT", "/v3/attachments/{A}",
     {"attachment": {"connector": {"initiator": "iqn.2026-01.x:none"}}}, "FANAA"),
    ("volume:attachment_complete", "POST", "/v3/attachments/{A}/action",
     {"os-complete": None}, "FANAA"),
    ("volume:attachment_delete", "DELETE", "/v3/attachments/{A}", None, "FANA-"),
    # compute: servers ({S} of P, ACTIVE, {W} attached)
    ("os_compute_api:servers:index", "GET", "/v2.1/servers", None, "AAAAA"),
    ("os_compute_api:servers:detail", "GET", "/v2.1/servers/detail", None, "AAAAA"),
    ("os_compute_api:servers:index:get_all_tenants", "GET", "/v2.1/servers?all_tenants=1",
     None, "FFFAA"),
    ("os_compute_api:servers:show", "GET", S, None, "AANAA"),
    # (booting {W}, which is in use: refused after policy, no server is made;
    # another project's member does not see {W})
    ("os_compute_api:servers:create", "POST", "/v2.1/servers", BOOT_W, "FANAA"),
    ("os_compute_api:servers:create:attach_volume", "POST", "/v2.1/servers", BOOT_W,
     "FANAA"),
    ("os_compute_api:servers:delete", "DELETE", S, None, "F-N--"),
    ("os_compute_api:servers:stop", "POST", S + "/action", {"os-stop": None}, "F-N--"),
    ("os_compute_api:servers:start", "POST", S + "/action", {"os-start": None}, "FANAA"),
    ("os_compute_api:os-lock-server:lock", "POST", S + "/action", {"lock": None}, "FANAA"),
    ("os_compute_api:os-lock-server:unlock", "POST", S + "/action", {"unlock": None},
     "FANAA"),
    ("os_compute_api:os-shelve:shelve", "POST", S + "/action", {"shelve": None}, "F-N--"),
    ("os_compute_api:os-shelve:shelve_offload", "POST", S + "/action",
     {"shelveOffload": None}, "FFNAA"),
    ("os_compute_api:os-shelve:unshelve", "POST", S + "/action", {"unshelve": None},
     "FANAA"),
    # compute: volume attachments and actions
    ("os_compute_api:os-volumes-attachments:index", "GET", S + "/os-volume_attachments",
     None, "AANAA"),
    ("os_compute_api:os-volumes-attachments:index", "GET", S + "/device-metadata", None,
     "AANAA"),
    ("os_compute_api:os-volumes-attachments:show", "GET", S + "/os-volume_attachments/{W}",
     None, "AANAA"),
    ("os_compute_api:os-volumes-attachments:create", "POST", S + "/os-volume_attachments",
     {"volumeAttachment": {"volumeId": "{W}"}}, "FANAA"),
    ("os_compute_api:os-volumes-attachments:update", "PUT",
     S + "/os-volume_attachments/{W}",
     {"volumeAttachment": {"volumeId": "{W}", "delete_on_termination": False}}, "FANAA"),
    ("os_compute_api:os-volumes-attachments:delete", "DELETE",
     S + "/os-volume_attachments/{W}", None, "F-N--"),
    ("os_compute_api:os-instance-actions:list", "GET", S + "/os-instance-actions", None,
     "AANAA"),
    ("os_compute_api:os-instance-actions:show", "GET", S + "/os-instance-actions/{R}",
     None, "AANAA"),
    ("tether:compute:flavors", "GET", "/v2.1/flavors", None, "AAAAA"),
    ("tether:compute:flavors", "GET", "/v2.1/flavors/detail", None, "AAAAA"),
    ("tether:compute:flavors", "GET", "/v2.1/flavors/1", None, "AAAAA"),
    ("os_compute_api:os-flavor-extra-specs:index", "GET", "/v2.1/flavors/1/os-extra_specs",
     None, "AAAAA"),
    # images (the one imported is public)
    ("get_images", "GET", "/v2/images", None, "AAAAA"),
    ("get_image", "GET", "/v2/images/{I}", None, "AAAAA"),
]


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    state = str(tmp_path_factory.mktemp("policy"))
    with open(os.path.join(state, "policy.yaml"), "w") as f:
        f.write("{}\n")  # the defaults; test_policy_file_override changes it
    extra = f"[oslo_policy]\npolicy_file = {os.path.join(state, 'policy.yaml')}\n"
    with tether_serve(state, tgtd, extra) as s:
        yield s
        with s.http(ADMIN) as c:  # (before tether_serve's 60 s: libvirtd may be slow)
            for sid in s.servers:
                c.delete(f"{s.compute_url}/servers/{sid}")
            for sid in s.servers:
                wait_for(lambda sid=sid: c.get(f"{s.compute_url}/servers/{sid}"
                                               ).status_code == 404, 300, f"{sid} deleted")
        s.servers.clear()


@pytest.fixture(scope="module")
def world(serve: Serve) -> dict[str, str]:
    """The member's resources, and the service token."""
    with open(os.path.join(serve.state_dir, "service_token")) as f:
        service = f.read().strip()
    with serve.http(MEMBER) as c:
        # (not Serve.create_server: a busy shared libvirtd can take a minute)
        res = c.post(f"{serve.compute_url}/servers",
                     json={"server": {"name": f"pm-{TAG}", "flavorRef": "1"}})
        assert res.status_code == 202, res.text
        sid = res.json()["server"]["id"]
        serve.servers.append(sid)
        vids = []
        for _ in range(2):
            res = c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}})
            assert res.status_code == 202, res.text
            vids.append(res.json()["volume"]["id"])
        v, w = vids
        for vid in vids:
            serve.wait_volume(MEMBER, vid, "available")
        wait_for(lambda: c.get(f"{serve.compute_url}/servers/{sid}").json()["server"][
            "status"] == "ACTIVE", 300, f"server {sid} ACTIVE")
        res = c.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
                     json={"volumeAttachment": {"volumeId": w}})
        assert res.status_code == 200, res.text
        serve.wait_volume(MEMBER, w, "in-use", timeout=300)
        (att,) = c.get(f"{serve.volume_url}/attachments?volume_id={w}").json()["attachments"]
        actions = c.get(f"{serve.compute_url}/servers/{sid}/os-instance-actions").json()
    raw = os.path.join(serve.state_dir, f"pm-{TAG}.raw")
    with open(raw, "wb") as f:
        f.truncate(1 << 20)
    out = serve_mod.cli(serve, "image", "import", raw, "--name", f"pm-{TAG}", "--json")
    assert out.returncode == 0, out.stderr
    image = __import__("json").loads(out.stdout)["id"]
    return {"S": sid, "V": v, "W": w, "A": att["id"], "I": image, "service": service,
            "R": actions["instanceActions"][0]["request_id"]}


def _token(persona: str, world: dict[str, str]) -> str:
    return {"reader": READER, "member": MEMBER, "other": OTHER, "admin": ADMIN,
            "service": world["service"]}[persona]


def _fill(value: Any, world: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key in ("S", "V", "W", "A", "I", "R"):
            value = value.replace("{" + key + "}", world[key])
        return value
    if isinstance(value, dict):
        return {k: _fill(v, world) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, world) for v in value]
    return value


def _url(serve: Serve, path: str) -> str:
    if path.startswith("/v3"):
        return f"http://127.0.0.1:{serve.volume_port}{path}"
    if path.startswith("/v2.1"):
        return f"http://127.0.0.1:{serve.compute_port}{path}"
    return f"{serve.image_url}{path}"


def _verdict(res: httpx.Response) -> str:
    assert res.status_code < 500, res.text
    assert res.status_code != 401, res.text
    if res.status_code in (403, 404):
        assert res.json(), "every refusal has a JSON body"
        return "F" if res.status_code == 403 else "N"
    return "A"


def test_matrix(serve: Serve, world: dict[str, str]) -> None:
    wrong = []
    for rule, method, path, body, expect in MATRIX:
        url = _url(serve, _fill(path, world))
        for persona, want in zip(PERSONAS, expect, strict=True):
            if want == "-":
                continue
            with serve.http(_token(persona, world)) as c:
                res = c.request(method, url, json=_fill(body, world))
            got = _verdict(res)
            if got != want:
                wrong.append(f"{rule} {method} {path} {persona}: {res.status_code} "
                             f"(expected {want}) {res.text[:160]}")
    assert not wrong, "\n".join(wrong)


def test_lists_show_only_the_visible(serve: Serve, world: dict[str, str]) -> None:
    for persona, sees in (("reader", True), ("other", False), ("admin", False)):
        with serve.http(_token(persona, world)) as c:
            vols = {v["id"] for v in c.get(f"{serve.volume_url}/volumes").json()["volumes"]}
            srvs = {s["id"] for s in c.get(f"{serve.compute_url}/servers").json()["servers"]}
        assert (world["V"] in vols, world["S"] in srvs) == (sees, sees), persona
    with serve.http(ADMIN) as c:
        vols = {v["id"] for v in c.get(f"{serve.volume_url}/volumes?all_tenants=1"
                                       ).json()["volumes"]}
    assert world["V"] in vols


def test_policy_file_override(serve: Serve, world: dict[str, str]) -> None:
    """A rule changed in the policy file takes effect without a restart."""
    path = os.path.join(serve.state_dir, "policy.yaml")
    url = f"{serve.volume_url}/volumes/{world['V']}"
    with serve.http(READER) as c:
        assert c.get(url).status_code == 200
        try:
            with open(path, "w") as f:
                f.write('"volume:get": "rule:project_member_or_admin"\n')
            later = os.stat(path).st_mtime + 10
            os.utime(path, (later, later))
            res = wait_for(lambda: (r := c.get(url)).status_code != 200 and r, 10,
                           "the override in force")
            assert res.status_code == 404  # show is also what hides another's volume
            with serve.http(MEMBER) as m:
                assert m.get(url).status_code == 200
        finally:
            with open(path, "w") as f:
                f.write("{}\n")
            later = os.stat(path).st_mtime + 20
            os.utime(path, (later, later))
        wait_for(lambda: c.get(url).status_code == 200, 10, "the default back")


def _target_block(tgtd: Tgtd, vid: str) -> str:
    """tgtadm's description of the volume's target ('' when there is none)."""
    for block in tgtd.show().split("Target ")[1:]:
        if vid in block:
            return block
    return ""


def test_cve_2023_2088_every_path_refused_on_a_real_guest(
        serve: Serve, world: dict[str, str], tgtd: Tgtd) -> None:
    sid, w, att = world["S"], world["W"], world["A"]
    acl = _target_block(tgtd, w)
    assert serve.initiator in acl and w in domain_xml(sid)
    with serve.http(MEMBER) as c:
        connector = {"initiator": serve.initiator, "host": serve.default_project}
        refused = [
            ("member attachment delete", MEMBER, "DELETE", f"/v3/attachments/{att}", None),
            ("member os-detach", MEMBER, "POST", f"/v3/volumes/{w}/action",
             {"os-detach": {"attachment_id": att}}),
            ("member os-terminate_connection", MEMBER, "POST", f"/v3/volumes/{w}/action",
             {"os-terminate_connection": {"connector": connector}}),
            ("admin os-force_detach", ADMIN, "POST", f"/v3/volumes/{w}/action",
             {"os-force_detach": {}}),
            ("admin os-reset_status detached", ADMIN, "POST", f"/v3/volumes/{w}/action",
             {"os-reset_status": {"attach_status": "detached"}}),
        ]
        for what, token, method, path, body in refused:
            with serve.http(token) as t:
                res = t.request(method, _url(serve, path), json=body)
            assert res.status_code == 409, (what, res.text)
            assert "conflictingRequest" in res.json(), what
            assert serve.volume(MEMBER, w)["status"] == "in-use", what
            assert _target_block(tgtd, w) == acl, what  # target and ACL untouched
            assert w in domain_xml(sid), what  # the guest keeps the disk
        # Nova's own detach: the compute service sends the service token
        res = c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{w}")
        assert res.status_code == 202, res.text
        serve.wait_volume(MEMBER, w, "available", timeout=300)
    assert _target_block(tgtd, w) == ""
    assert w not in domain_xml(sid)
    out = subprocess.run(["virsh", "-c", "qemu:///system", "domblklist", sid],
                         capture_output=True, text=True, check=True).stdout
    assert w not in out
