"""The real OpenStack clients, unmodified from PyPI (tools/clients-requirements.txt),
against a running ``tether serve`` on the real daemons, in its default mode
(the local identity: every client authenticates with a password, as the
README's ``auth_type: password`` cloud does; one case keeps noauth).  Every test checks
what the client did on the guest (its live and persistent domain XML) and on
the target (tgt's export and ACL), not only the client's exit code."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import wait_for
from tests.integration import serve as serve_mod
from tests.integration.clients import (
    Clients,
    clouds_yaml,
    clouds_yaml_password,
    ensure_client_venv,
)
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve, tether_serve
from tests.integration.stack import domain_xml
from tether.executor import ProcessRunner
from tether.virt.driver import disk_alias
from tether.volume.targets.tgt import TgtTarget

TAG = uuid.uuid4().hex[:6]
PASSWORD = f"pw-{uuid.uuid4().hex}"  # every test user's; each has a project of its own
# (user, project) of each account the tests use
DEFAULT = (f"osc-user-{TAG}", f"osc-{TAG}")  # the ``tether`` cloud's
SDK = (f"sdk-user-{TAG}", f"sdk-{TAG}")
TOK = (f"tok-user-{TAG}", f"tok-{TAG}")
CAROL = (f"carol-{TAG}", f"cinder-{TAG}")
DAVE = (f"dave-{TAG}", f"other-{TAG}")


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    state = str(tmp_path_factory.mktemp("serve"))
    with tether_serve(state, tgtd, auth_strategy="local") as s:
        path = os.path.join(state, "users.pw")
        with open(path, "w") as f:
            f.write(PASSWORD)
        for user, project in (DEFAULT, SDK, TOK, CAROL, DAVE):
            for argv in (("project", "create", project),
                         ("user", "create", user, "--project", project, "--password-file",
                          path)):
                out = serve_mod.cli(s, *argv)
                assert out.returncode == 0, out.stderr
        yield s
    for sid in s.servers:
        assert subprocess.run(["virsh", "-c", "qemu:///system", "dominfo", sid],
                              capture_output=True, check=False).returncode != 0


@pytest.fixture(scope="module")
def clients(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    ensure_client_venv()
    path = os.path.join(str(tmp_path_factory.mktemp("clients")), "clouds.yaml")
    with open(path, "w") as f:
        f.write(clouds_yaml_password(serve, {
            "tether": (*DEFAULT[:1], PASSWORD, DEFAULT[1]),
            "tether-admin": ("admin", serve.admin_password(), "admin"),
            "tether-sdk": (SDK[0], PASSWORD, SDK[1])}, token_cloud=True))
    return Clients(serve, path)


def _token(serve: Serve, account: tuple[str, str]) -> str:
    return serve.password_token(account[0], PASSWORD, account[1])


def _project_id(serve: Serve, name: str) -> str:
    out = serve_mod.cli(serve, "project", "list", "--json")
    assert out.returncode == 0, out.stderr
    return next(str(p["id"]) for p in json.loads(out.stdout) if p["name"] == name)


def _auth(account: tuple[str, str]) -> list[str]:
    """Password auth options of novaclient and cinderclient."""
    return ["--os-username", account[0], "--os-password", PASSWORD, "--os-project-name",
            account[1], "--os-user-domain-name", "Default", "--os-project-domain-name",
            "Default"]


@pytest.fixture(scope="module")
def target(tgtd: Tgtd) -> TgtTarget:
    return TgtTarget(ProcessRunner(), "127.0.0.1", tgtd.portal_port, tgtd.control_port)


def _name(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex[:8]}"


def _default_token(serve: Serve) -> str:
    """A token of the ``tether`` cloud's user and project."""
    return _token(serve, DEFAULT)


def _assert_attached(serve: Serve, target: TgtTarget, sid: str, vid: str) -> None:
    alias = disk_alias(vid)
    assert alias in domain_xml(sid) and alias in domain_xml(sid, inactive=True)
    assert target.exports()[vid].initiators == {serve.initiator}
    wait_for(lambda: target.sessions(vid) == {serve.initiator}, 10, "QEMU's iSCSI session")


def _assert_detached(target: TgtTarget, sid: str, vid: str) -> None:
    alias = disk_alias(vid)
    assert alias not in domain_xml(sid) and alias not in domain_xml(sid, inactive=True)
    assert vid not in target.exports()


def _create_volume(serve: Serve, token: str, name: str) -> str:
    with serve.http(token) as c:
        res = c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1, "name": name}})
        res.raise_for_status()
        vid: str = res.json()["volume"]["id"]
    serve.wait_volume(token, vid, "available")
    return vid


def _attach(serve: Serve, token: str, sid: str, vid: str) -> None:
    with serve.http(token) as c:
        c.post(f"{serve.compute_url}/servers/{sid}/os-volume_attachments",
               json={"volumeAttachment": {"volumeId": vid}}).raise_for_status()
    serve.wait_volume(token, vid, "in-use")


def _gone(serve: Serve, token: str, vid: str) -> bool:
    with serve.http(token) as c:
        return c.get(f"{serve.volume_url}/volumes/{vid}").status_code == 404


def test_openstack_cli_volume_lifecycle(serve: Serve, clients: Clients,
                                        target: TgtTarget) -> None:
    """``auth_type: password``: the cloud's user in its project."""
    token = _default_token(serve)
    server_name, volume_name = _name("osc-vm"), _name("osc-vol")
    sid = serve.create_server(token, server_name)

    vol = clients.openstack("volume", "create", "--size", "1", volume_name, "-f", "json")
    vid = vol["id"]
    assert (vol["name"], vol["size"]) == (volume_name, 1)
    assert serve.wait_volume(token, vid, "available")["os-vol-tenant-attr:tenant_id"] == \
        _project_id(serve, DEFAULT[1])

    # by name: GET /servers/{name} and /volumes/{name} are 404, then the lists
    att = clients.openstack("server", "add", "volume", server_name, volume_name, "-f", "json")
    assert (att["Server ID"], att["Volume ID"]) == (sid, vid)
    vol = serve.wait_volume(token, vid, "in-use")
    assert vol["attachments"][0]["device"] == att["Device"]
    _assert_attached(serve, target, sid, vid)

    rows = clients.openstack("server", "volume", "list", server_name, "-f", "json")
    assert [(r["Volume ID"], r["Device"], r["Delete On Termination?"]) for r in rows] == [
        (vid, att["Device"], False)]
    clients.openstack("server", "volume", "update", "--delete-on-termination", server_name,
                      volume_name)  # PUT os-volume_attachments, microversion 2.85
    rows = clients.openstack("server", "volume", "list", server_name, "-f", "json")
    assert [r["Delete On Termination?"] for r in rows] == [True]
    atts = clients.openstack("volume", "attachment", "list", "-f", "json")
    mine = [a for a in atts if a["Volume ID"] == vid]
    assert [(a["Server ID"], a["Status"]) for a in mine] == [(sid, "attached")]
    assert mine[0]["ID"] == vol["attachments"][0]["attachment_id"]

    clients.openstack("server", "remove", "volume", server_name, volume_name)
    serve.wait_volume(token, vid, "available")
    _assert_detached(target, sid, vid)
    assert clients.openstack("volume", "attachment", "list", "--volume-id", vid,
                             "-f", "json") == []

    clients.openstack("volume", "delete", volume_name)
    wait_for(lambda: _gone(serve, token, vid), 30, f"volume {vid} deleted")


def test_openstack_cli_tokens(serve: Serve, clients: Clients) -> None:
    """``--os-token TOKEN --os-endpoint`` (OSC's admin_token, which needs the
    static identity document) acts as the token's user in its project; the
    admin sees every project; flavors by name."""
    token = _token(serve, TOK)
    volume_name = _name("tok-vol")
    vol = clients.openstack("volume", "create", "--size", "1", volume_name, "-f", "json",
                            token=token)
    assert vol["os-vol-tenant-attr:tenant_id"] == _project_id(serve, TOK[1])
    listed = clients.openstack("volume", "list", "-f", "json")  # the default project's
    assert vol["id"] not in {v["ID"] for v in listed}
    every = clients.openstack("volume", "list", "--all-projects", "-f", "json",
                              cloud="tether-admin")
    assert vol["id"] in {v["ID"] for v in every}
    flavor = clients.openstack("flavor", "show", "t1.small", "-f", "json", cloud="tether-admin")
    assert (flavor["id"], flavor["name"], flavor["properties"]) == ("3", "t1.small", {})
    serve.wait_volume(token, vol["id"], "available")
    clients.openstack("volume", "delete", vol["id"], token=token)
    wait_for(lambda: _gone(serve, token, vol["id"]), 30, "volume deleted")


SDK_SCRIPT = """
import json, sys
import openstack
cloud, op, server_name, volume_name = sys.argv[1:5]
conn = openstack.connect(cloud=cloud)
server = conn.get_server(server_name)
if op == "create":
    vol = conn.create_volume(size=1, name=volume_name, wait=True, timeout=60)
    print(json.dumps({"id": vol.id, "status": vol.status}))
elif op == "attach":
    att = conn.attach_volume(server, conn.get_volume(volume_name), wait=True, timeout=120)
    vol = conn.get_volume(volume_name)
    print(json.dumps({"device": att.device, "status": vol.status,
                      "attached_to": [a["server_id"] for a in vol.attachments],
                      "devices": [a["device"] for a in vol.attachments]}))
elif op == "detach":
    conn.detach_volume(server, conn.get_volume(volume_name), wait=True, timeout=120)
    print(json.dumps({"status": conn.get_volume(volume_name).status}))
elif op == "delete":
    print(json.dumps({"deleted": conn.delete_volume(volume_name, wait=True, timeout=60)}))
"""


def test_openstacksdk_attach_detach_wait(serve: Serve, clients: Clients,
                                         target: TgtTarget) -> None:
    """openstacksdk's cloud layer, as the user ``sdk-user`` of its own project."""
    server_name, volume_name = _name("sdk-vm"), _name("sdk-vol")
    sdk_token = _token(serve, SDK)
    sid = serve.create_server(sdk_token, server_name)
    vid = clients.sdk(SDK_SCRIPT, "create", server_name, volume_name, cloud="tether-sdk")["id"]
    assert serve.volume(sdk_token, vid)["os-vol-tenant-attr:tenant_id"] == \
        _project_id(serve, SDK[1])

    out = clients.sdk(SDK_SCRIPT, "attach", server_name, volume_name, cloud="tether-sdk")
    # wait=True returned only once the volume was in-use
    assert (out["status"], out["attached_to"], out["devices"]) == (
        "in-use", [sid], [out["device"]])
    _assert_attached(serve, target, sid, vid)

    out = clients.sdk(SDK_SCRIPT, "detach", server_name, volume_name, cloud="tether-sdk")
    assert out["status"] == "available"
    _assert_detached(target, sid, vid)

    assert clients.sdk(SDK_SCRIPT, "delete", server_name, volume_name,
                       cloud="tether-sdk")["deleted"] is True
    assert _gone(serve, sdk_token, vid)


def _table(text: str) -> dict[str, str]:
    """A novaclient/cinderclient ``| Property | Value |`` table."""
    rows = (line.split("|") for line in text.splitlines() if line.startswith("| "))
    return {cells[1].strip(): cells[2].strip() for cells in rows if len(cells) >= 4}


def test_novaclient_volume_attach_detach(serve: Serve, clients: Clients,
                                         target: TgtTarget) -> None:
    """``nova`` with password auth; attach at the oldest microversion, detach at
    the newest novaclient speaks."""
    token = _default_token(serve)
    server_name = _name("nova-vm")
    sid = serve.create_server(token, server_name)
    vid = _create_volume(serve, token, _name("nova-vol"))

    shown = _table(clients.nova_password(_auth(DEFAULT), "--os-compute-api-version", "2.1",
                                         "volume-attach", server_name, vid))
    assert (shown["serverId"], shown["volumeId"]) == (sid, vid)
    assert re.fullmatch(r"/dev/[sv]d[b-z]", shown["device"])
    serve.wait_volume(token, vid, "in-use")
    _assert_attached(serve, target, sid, vid)
    listed = clients.nova_password(_auth(DEFAULT), "volume-attachments", server_name)
    assert vid in listed and shown["device"] in listed

    clients.nova_password(_auth(DEFAULT), "volume-detach", server_name, vid)
    serve.wait_volume(token, vid, "available")
    _assert_detached(target, sid, vid)


def test_cinderclient_list_show(serve: Serve, clients: Clients, target: TgtTarget) -> None:
    """cinderclient with password auth; ``show NAME`` looks the volume up with
    ``all_tenants=1`` even for a non-admin."""
    token = _token(serve, CAROL)
    volume_name = _name("cinder-vol")
    sid = serve.create_server(token, _name("cinder-vm"))
    vid = _create_volume(serve, token, volume_name)
    _attach(serve, token, sid, vid)
    _assert_attached(serve, target, sid, vid)

    listed = clients.cinder_password(_auth(CAROL), "list")
    row = next(line for line in listed.splitlines() if vid in line)
    cells = [c.strip() for c in row.split("|")]
    assert "in-use" in cells and volume_name in cells and sid in cells

    shown = _table(clients.cinder_password(_auth(CAROL), "show", volume_name))
    assert (shown["id"], shown["status"], shown["name"]) == (vid, "in-use", volume_name)
    assert sid in shown["attached_servers"]
    assert shown["os-vol-tenant-attr:tenant_id"] == _project_id(serve, CAROL[1])
    # another project sees nothing of it; the admin user sees it with --all-tenants
    assert vid not in clients.cinder_password(_auth(DAVE), "list", "--all-tenants")
    admin = ["--os-username", "admin", "--os-password", serve.admin_password(),
             "--os-project-name", "admin", "--os-user-domain-name", "Default",
             "--os-project-domain-name", "Default"]
    assert vid in clients.cinder_password(admin, "list", "--all-tenants")

    with serve.http(token) as c:
        c.delete(f"{serve.compute_url}/servers/{sid}/os-volume_attachments/{vid}"
                 ).raise_for_status()
    serve.wait_volume(token, vid, "available")
    _assert_detached(target, sid, vid)
    shown = _table(clients.cinder_password(_auth(CAROL), "show", vid))
    assert (shown["status"], shown["attached_servers"]) == ("available", "[]")


def test_discovery_needs_no_token(serve: Serve) -> None:
    """What the clients read before they send a token."""
    docs: dict[str, Any] = {}
    for url in (serve.compute_url, serve.compute_url + "/", serve.volume_url,
                serve.volume_url + "/",
                f"http://127.0.0.1:{serve.compute_port}/identity/v3"):
        res = httpx.get(url, timeout=5)
        assert res.status_code == 200, (url, res.text)
        docs[url] = res.json()["version"]
    assert docs[serve.compute_url]["version"] == "2.96"
    assert docs[serve.volume_url]["min_version"] == "3.0"
    assert docs[f"http://127.0.0.1:{serve.compute_port}/identity/v3"]["id"] == "v3.14"


def test_noauth_clients(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
                        libvirtd: None) -> None:
    """``auth_strategy = noauth`` (configured): the README's noauth clouds --
    ``auth_type: none`` lands in the default project, ``admin_token`` with a
    ``user:project`` token, cinderclient's own noauth."""
    ensure_client_venv()
    state = str(tmp_path_factory.mktemp("noauth"))
    with tether_serve(state, tgtd) as s:
        path = os.path.join(state, "clouds.yaml")
        project = _name("na")
        with open(path, "w") as f:
            f.write(clouds_yaml(s, {"tether-admin": "admin:admin",
                                    "tether-user": f"na-user:{project}"}))
        clients = Clients(s, path)
        vol = clients.openstack("volume", "create", "--size", "1", _name("na-vol"), "-f",
                                "json")
        assert vol["os-vol-tenant-attr:tenant_id"] == s.default_project
        mine = clients.openstack("volume", "create", "--size", "1", _name("na-vol"), "-f",
                                 "json", cloud="tether-user")
        assert mine["os-vol-tenant-attr:tenant_id"] == project
        listed = clients.cinder("na-user", project, "list")
        assert mine["id"] in listed and vol["id"] not in listed
        every = clients.openstack("volume", "list", "--all-projects", "-f", "json",
                                  cloud="tether-admin")
        assert {vol["id"], mine["id"]} <= {v["ID"] for v in every}
