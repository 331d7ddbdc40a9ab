"""``[api] auth_strategy = keystone`` against a real Keystone from PyPI
(tests/integration/keystone.py): ``tether serve`` checks every token with
keystonemiddleware, and its services call each other with the service
user's own Keystone token."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import wait_for
from tests.integration.clients import Clients, ensure_client_venv
from tests.integration.daemons import Tgtd, free_port
from tests.integration.keystone import Keystone, User, keystone, service_config
from tests.integration.serve import Serve, start, stop, write_config
from tests.integration.stack import domain_xml
from tether.virt.driver import disk_alias

TAG = uuid.uuid4().hex[:6]
PROJECT = f"ks-{TAG}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd, libvirtd: None
          ) -> Iterator[tuple[Keystone, Serve, dict[str, User]]]:
    """Keystone and ``tether serve`` on it, started side by side (serve needs
    Keystone only for its first token); the service user, a member and a
    reader of one project."""
    service = User(f"tether-{TAG}", secrets.token_urlsafe(12), f"service-{TAG}")
    directory = str(tmp_path_factory.mktemp("keystone"))
    port = free_port()
    config = service_config(Keystone(directory, port), service)
    serve = write_config(str(tmp_path_factory.mktemp("serve")), tgtd, config)
    try:
        with keystone(directory, lambda: start(serve), port=port) as ks:
            users = {"service": ks.user(service.project, "service", "admin",
                                        name=service.name, password=service.password),
                     "member": ks.user(PROJECT, "member", "reader"),
                     "reader": ks.user(PROJECT, "reader")}
            try:
                yield ks, serve, users
            finally:
                if ks.proc is None:
                    ks.start()
                serve.delete_servers(ks.admin_token())
                serve.delete_volumes(ks.admin_token())
    finally:
        stop(serve)


@pytest.fixture(scope="module")
def ks(stack: tuple[Keystone, Serve, dict[str, User]]) -> Keystone:
    return stack[0]


@pytest.fixture(scope="module")
def serve(stack: tuple[Keystone, Serve, dict[str, User]]) -> Serve:
    return stack[1]


@pytest.fixture(scope="module")
def users(stack: tuple[Keystone, Serve, dict[str, User]]) -> dict[str, User]:
    return stack[2]


def _fault(res: httpx.Response, status: int) -> dict[str, Any]:
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith("application/json"), res.headers
    (fault,) = res.json().values()
    assert fault["code"] == status
    return dict(fault)


def test_member_attaches_and_detaches_on_a_real_guest(serve: Serve, ks: Keystone,
                                                      users: dict[str, User]) -> None:
    """The member's token makes the volume and the server; the attach and
    detach need the compute service's calls to block storage, made with the
    service user's Keystone token (roles service, admin)."""
    token = ks.user_token(users["member"])
    with serve.http(token) as c:
        res = c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1,
                                                                     "name": f"v-{TAG}"}})
        assert res.status_code == 202, res.text
        vid = res.json()["volume"]["id"]
        serve.wait_volume(token, vid, "available")
        sid = serve.create_server(token, f"vm-{TAG}")
        res = c.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
                     json={"volumeAttachment": {"volumeId": vid}})
        assert res.status_code == 200, res.text
        vol = serve.wait_volume(token, vid, "in-use")
        assert disk_alias(vid) in domain_xml(sid)
        # CVE-2023-2088: the member may not pull the attachment from under the
        # guest; only the service role (the service user's token) may
        att = vol["attachments"][0]["attachment_id"]
        _fault(c.delete(f"{serve.volume_url}/attachments/{att}",
                        headers={"OpenStack-API-Version": "volume 3.44"}), 409)
        res = c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}")
        assert res.status_code == 202, res.text
        serve.wait_volume(token, vid, "available")
        assert disk_alias(vid) not in domain_xml(sid)


def test_reader_looks_but_cannot_change(serve: Serve, ks: Keystone,
                                        users: dict[str, User]) -> None:
    token = ks.user_token(users["reader"])
    with serve.http(token) as c:
        assert c.get(f"{serve.volume_url}/volumes").status_code == 200
        assert c.get(f"{serve.compute_url}/servers").status_code == 200
        _fault(c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}}), 403)
        _fault(c.post(f"{serve.compute_url}/servers",
                      json={"server": {"name": "no", "flavorRef": "1"}}), 403)


@pytest.mark.parametrize("token", ["gAAAAABnot-a-real-token", "", "t\u00e9\u00e9"])
def test_invalid_token_is_401_json(serve: Serve, ks: Keystone, token: str) -> None:
    headers = {"X-Auth-Token": token.encode()} if token else {}
    for url in (f"{serve.volume_url}/volumes", f"{serve.compute_url}/servers"):
        res = httpx.get(url, headers=headers, timeout=30)
        _fault(res, 401)
        assert res.headers["www-authenticate"] == f'Keystone uri="{ks.url}"'


def test_discovery_needs_no_token(serve: Serve) -> None:
    assert httpx.get(serve.volume_url, timeout=30).status_code == 200
    assert httpx.get(serve.compute_url, timeout=30).status_code == 200


def test_spoofed_identity_headers_are_ignored(serve: Serve, ks: Keystone,
                                              users: dict[str, User]) -> None:
    """The member sends headers claiming admin (and service) in the admin
    project: the middleware drops them and says who the token is."""
    with serve.http(ks.admin_token()) as c:
        res = c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}})
        assert res.status_code == 202, res.text
        theirs = res.json()["volume"]["id"]
        admin_project = c.get(f"{serve.volume_url}/volumes/{theirs}").json()["volume"][
            "os-vol-tenant-attr:tenant_id"]
    spoof = {"X-Identity-Status": "Confirmed", "X-Roles": "admin,service",
             "X-Project-Id": admin_project, "X-User-Id": "admin", "X-Tenant-Id": admin_project,
             "X-Service-Roles": "service", "X-Is-Admin-Project": "True"}
    with serve.http(ks.user_token(users["member"])) as c:
        _fault(c.get(f"{serve.volume_url}/volumes/{theirs}", headers=spoof), 404)
        listed = c.get(f"{serve.volume_url}/volumes?all_tenants=1", headers=spoof).json()
        assert theirs not in [v["id"] for v in listed["volumes"]]
    # no token at all: the headers alone are nothing
    _fault(httpx.get(f"{serve.volume_url}/volumes", headers=spoof, timeout=30), 401)


def test_openstack_cli_password_auth(serve: Serve, ks: Keystone, users: dict[str, User],
                                     tmp_path: Any) -> None:
    """``auth_type: password`` against Keystone: the CLI gets its own token
    and Tether's keystonemiddleware accepts it."""
    ensure_client_venv()
    member = users["member"]
    path = os.path.join(tmp_path, "clouds.yaml")
    with open(path, "w") as f:
        f.write(f"""clouds:
  ks:
    auth_type: password
    auth:
      auth_url: {ks.url}
      username: {member.name}
      password: {member.password}
      project_name: {member.project}
      user_domain_name: Default
      project_domain_name: Default
    identity_api_version: "3"
    volume_api_version: "3"
    compute_endpoint_override: {serve.compute_url}
    block_storage_endpoint_override: {serve.volume_url}
    image_endpoint_override: {serve.image_url}
    has_network: false
""")
    clients = Clients(serve, path)
    name = f"osc-{TAG}"
    vol = clients.openstack("volume", "create", "--size", "1", name, "-f", "json", cloud="ks")
    token = ks.user_token(member)
    assert serve.wait_volume(token, vol["id"], "available")["name"] == name
    clients.openstack("volume", "delete", name, cloud="ks")  # found by name: a list first
    with serve.http(token) as c:
        wait_for(lambda: c.get(f"{serve.volume_url}/volumes/{vol['id']}").status_code == 404,
                 30, "volume deleted")


def test_keystone_down_is_503_json(serve: Serve, ks: Keystone, users: dict[str, User]) -> None:
    """A token the middleware has not seen yet cannot be checked while
    Keystone is down: 503 with Tether's JSON (never HTML, never 500); once
    Keystone is back, the same token works."""
    token = ks.user_token(users["member"])
    ks.stop()
    try:
        with serve.http(token) as c:
            for url in (f"{serve.volume_url}/volumes", f"{serve.compute_url}/servers"):
                fault = _fault(c.get(url), 503)
                assert "Keystone" in fault["message"]
    finally:
        ks.start()
    with serve.http(token) as c:
        assert c.get(f"{serve.volume_url}/volumes").status_code == 200
