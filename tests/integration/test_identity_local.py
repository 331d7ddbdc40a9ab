"""``tether serve`` in its default mode, ``[api] auth_strategy = local``, on the
real daemons: tokens from its Identity v3 API (password, application
credential), a member attaching and detaching on a real guest, a reader
refused, expired / tampered / revoked tokens refused (401), the openstack CLI
with the ordinary ``auth_type: password`` cloud, and the admin's password
file private."""

from __future__ import annotations

import os
import stat
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import wait_for
from tests.integration import serve as serve_mod
from tests.integration.clients import Clients, clouds_yaml_password, ensure_client_venv
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve, tether_serve
from tests.integration.stack import domain_xml
from tests.integration.test_openstack_clients import SDK_SCRIPT
from tether import config
from tether.db.api import Database
from tether.identity.store import IdentityStore
from tether.identity.tokens import Tokens
from tether.virt.driver import disk_alias

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
PROJECT = f"idp-{TAG}"
PASSWORDS = {"member": f"m-{uuid.uuid4().hex}", "reader": f"r-{uuid.uuid4().hex}",
             "gone": f"g-{uuid.uuid4().hex}"}


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    state = str(tmp_path_factory.mktemp("identity"))
    # revocations made by the CLI (another process) apply within 1 s
    with tether_serve(state, tgtd, "[identity]\nrevocation_check_interval = 1\n",
                      auth_strategy="local") as s:
        _cli(s, "project", "create", PROJECT)
        for role, password in PASSWORDS.items():
            path = os.path.join(state, f"{role}.pw")
            with open(path, "w") as f:
                f.write(password)
            _cli(s, "user", "create", f"{role}-{TAG}", "--project", PROJECT, "--role",
                 "member" if role == "gone" else role, "--password-file", path)
        yield s


def _cli(serve: Serve, *args: str) -> str:
    out = serve_mod.cli(serve, *args)
    assert out.returncode == 0, f"tether {' '.join(args)}: {out.stderr}"
    return out.stdout


def _token(serve: Serve, role: str) -> str:
    return serve.password_token(f"{role}-{TAG}", PASSWORDS[role], PROJECT)


def _store(serve: Serve) -> IdentityStore:
    conf = config.load(os.path.join(serve.state_dir, "tether.conf"), serve.state_dir)
    return IdentityStore(Database(config.database_url(conf)))


def _key(serve: Serve) -> bytes:
    with open(os.path.join(serve.state_dir, "token.key")) as f:
        return bytes.fromhex(f.read().strip())


def test_admin_password_and_key_files_are_private(serve: Serve) -> None:
    for name in ("admin-password", "service_password", "token.key"):
        st = os.stat(os.path.join(serve.state_dir, name))
        assert stat.S_IMODE(st.st_mode) == 0o600, name
    res = httpx.get(f"{serve.volume_url}/volumes", headers={
        "X-Auth-Token": serve.admin_token()}, timeout=30)
    assert res.status_code == 200, res.text


def test_noauth_tokens_are_not_accepted(serve: Serve) -> None:
    for token in ("admin:admin", f"member-{TAG}:{PROJECT}", "notused"):
        with serve.http(token) as c:
            res = c.get(f"{serve.volume_url}/volumes")
        assert res.status_code == 401, res.text
        assert res.json()["unauthorized"]["code"] == 401


def test_member_attaches_and_detaches_reader_only_looks(serve: Serve) -> None:
    member, reader = _token(serve, "member"), _token(serve, "reader")
    with serve.http(member) as c:
        res = c.post(f"{serve.volume_url}/volumes",
                     json={"volume": {"size": 1, "name": f"idv-{TAG}"}})
        assert res.status_code == 202, res.text
        vid = res.json()["volume"]["id"]
        serve.wait_volume(member, vid, "available")
        sid = serve.create_server(member, f"ids-{TAG}")
        with serve.http(reader) as r:
            assert r.get(f"{serve.volume_url}/volumes/{vid}").status_code == 200
            refused = [r.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}}),
                       r.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
                              json={"volumeAttachment": {"volumeId": vid}}),
                       r.delete(f"{serve.volume_url}/volumes/{vid}")]
            assert [x.status_code for x in refused] == [403, 403, 403], \
                [x.text for x in refused]
        res = c.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
                     json={"volumeAttachment": {"volumeId": vid}})
        assert res.status_code == 200, res.text
        serve.wait_volume(member, vid, "in-use", timeout=300)
        assert disk_alias(vid) in domain_xml(sid)
        vol = serve.volume(member, vid)
        assert vol["attachments"][0]["server_id"] == sid
        with serve.http(reader) as r:
            res = r.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}")
            assert res.status_code == 403, res.text
        res = c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}")
        assert res.status_code == 202, res.text
        serve.wait_volume(member, vid, "available", timeout=300)
        assert disk_alias(vid) not in domain_xml(sid)
        assert c.delete(f"{serve.volume_url}/volumes/{vid}").status_code == 202


def test_expired_tampered_and_revoked_tokens_are_401(serve: Serve) -> None:
    store = _store(serve)
    try:
        user = store.user(f"member-{TAG}")
        project = store.project(PROJECT)
        state = store.token_state(user.id, project.id)
        assert state is not None
        past = Tokens(store, _key(serve), 60, clock=lambda: time.time() - 120)
        expired, _ = past.issue(user.id, user.name, project.id, project.name,
                                ("reader", "member"), state)
    finally:
        store.db.dispose()
    good = _token(serve, "member")
    prefix, payload, mac = good.split(".")
    flipped = payload[:-3] + ("A" if payload[-3] != "A" else "B") + payload[-2:]
    bad: str | bytes
    for bad, why in ((expired, "expired"), (f"{prefix}.{flipped}.{mac}", "signature"),
                     (good + "x", "signature"), ("tt1.\u00e9".encode(), "")):
        res = httpx.get(f"{serve.volume_url}/volumes", headers={"X-Auth-Token": bad}, timeout=30)
        assert res.status_code == 401, (why, res.text)
        assert why in res.json()["unauthorized"]["message"], res.text
    # revoked through the identity API: at once
    res = httpx.delete(f"{serve.identity_url}/auth/tokens",
                       headers={"X-Auth-Token": good, "X-Subject-Token": good}, timeout=30)
    assert res.status_code == 204, res.text
    with serve.http(good) as c:
        assert c.get(f"{serve.volume_url}/volumes").status_code == 401
    # the user's role removed by the CLI (another process): within the interval
    gone = _token(serve, "gone")
    with serve.http(gone) as c:
        assert c.get(f"{serve.volume_url}/volumes").status_code == 200
        _cli(serve, "role", "remove", "member", "--user", f"gone-{TAG}", "--project", PROJECT)
        wait_for(lambda: c.get(f"{serve.volume_url}/volumes").status_code == 401, 10,
                 "the removed role's token refused")
    res = httpx.post(f"{serve.identity_url}/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": f"gone-{TAG}", "domain": {"name": "Default"},
            "password": PASSWORDS["gone"]}}},
        "scope": {"project": {"name": PROJECT, "domain": {"name": "Default"}}}}})
    assert res.status_code == 401 and res.json()["error"]["code"] == 401


def test_application_credential(serve: Serve) -> None:
    out = _cli(serve, "application-credential", "create", f"ci-{TAG}", "--user",
               f"member-{TAG}", "--project", PROJECT, "--role", "reader", "--json")
    cred = __import__("json").loads(out)[0]
    res = httpx.post(f"{serve.identity_url}/auth/tokens", timeout=30, json={"auth": {
        "identity": {"methods": ["application_credential"], "application_credential": {
            "id": cred["id"], "secret": cred["secret"]}}}})
    assert res.status_code == 201, res.text
    token = res.headers["X-Subject-Token"]
    assert [r["name"] for r in res.json()["token"]["roles"]] == ["reader"]
    with serve.http(token) as c:
        assert c.get(f"{serve.volume_url}/volumes").status_code == 200
        assert c.post(f"{serve.volume_url}/volumes",
                      json={"volume": {"size": 1}}).status_code == 403
        _cli(serve, "application-credential", "delete", cred["id"])
        wait_for(lambda: c.get(f"{serve.volume_url}/volumes").status_code == 401, 10,
                 "the deleted credential's token refused")


@pytest.fixture(scope="module")
def clients(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    """The README's ``auth_type: password`` clouds: ``tether`` the admin,
    ``tether-member`` the member of the test's project."""
    ensure_client_venv()
    path = os.path.join(str(tmp_path_factory.mktemp("clouds")), "clouds.yaml")
    with open(path, "w") as f:
        f.write(clouds_yaml_password(serve, {
            "tether": ("admin", serve.admin_password(), "admin"),
            "tether-member": (f"member-{TAG}", PASSWORDS["member"], PROJECT)}))
    return Clients(serve, path)


def test_openstack_cli_with_password_auth(serve: Serve, clients: Clients) -> None:
    issued = clients.openstack("token", "issue", "-f", "json", cloud="tether-member")
    assert issued["project_id"] == _store(serve).project(PROJECT).id
    name = f"osc-{TAG}"
    made = clients.openstack("volume", "create", "--size", "1", name, "-f", "json",
                             cloud="tether-member")
    serve.wait_volume(_token(serve, "member"), made["id"], "available")
    listed = clients.openstack("volume", "list", "-f", "json", cloud="tether-member")
    assert name in [v["Name"] for v in listed]
    every = clients.openstack("volume", "list", "--all-projects", "-f", "json")
    assert name in [v["Name"] for v in every]
    clients.openstack("volume", "delete", made["id"], cloud="tether-member")
    servers = clients.openstack("server", "list", "-f", "json", cloud="tether-member")
    assert {s["Name"] for s in servers} <= {f"ids-{TAG}"}  # the member's, if any


def test_openstacksdk_attach_detach_with_password_auth(serve: Serve, clients: Clients) -> None:
    member = _token(serve, "member")
    server_name, volume_name = f"sdk-vm-{TAG}", f"sdk-vol-{TAG}"
    sid = serve.create_server(member, server_name)
    vid = clients.sdk(SDK_SCRIPT, "create", server_name, volume_name,
                      cloud="tether-member")["id"]
    assert serve.volume(member, vid)["os-vol-tenant-attr:tenant_id"] == \
        _store(serve).project(PROJECT).id
    out = clients.sdk(SDK_SCRIPT, "attach", server_name, volume_name, cloud="tether-member")
    assert (out["status"], out["attached_to"]) == ("in-use", [sid])
    assert disk_alias(vid) in domain_xml(sid)
    out = clients.sdk(SDK_SCRIPT, "detach", server_name, volume_name, cloud="tether-member")
    assert out["status"] == "available"
    assert disk_alias(vid) not in domain_xml(sid)
    assert clients.sdk(SDK_SCRIPT, "delete", server_name, volume_name,
                       cloud="tether-member")["deleted"] is True


def test_cinderclient_and_novaclient_with_password_auth(serve: Serve, clients: Clients) -> None:
    auth = ["--os-auth-url", serve.identity_url, "--os-username", f"member-{TAG}",
            "--os-password", PASSWORDS["member"], "--os-project-name", PROJECT,
            "--os-user-domain-name", "Default", "--os-project-domain-name", "Default"]
    bin_dir = os.path.dirname(clients.env()["PATH"].split(os.pathsep)[0] + "/x")
    listed = clients.run([os.path.join(bin_dir, "cinder"), *auth, "list"], clients.env())
    assert "ID" in listed
    servers = clients.run([os.path.join(bin_dir, "nova"), *auth, "list"], clients.env())
    assert "ID" in servers
