"""Quotas through the real OpenStack clients against ``tether serve`` on the
real daemons: ``openstack quota set/show``, ``openstack limits show
--absolute``, cinderclient's quota-usage and absolute-limits, and a create
beyond the quota refused with Nova's and Cinder's errors.  And Nova's
``[compute] max_disk_devices_to_attach`` on a real guest: limit 1, the
second attach is 403 and the guest keeps one disk.

``openstack quota show`` without ``--compute`` or ``--volume`` also asks the
Network API, which Tether does not have and, without a service catalog
(``auth_type: none``/``admin_token``), the client cannot know is absent."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import wait_for
from tests.integration.clients import VENV_BIN, Clients, clouds_yaml, ensure_client_venv
from tests.integration.daemons import Tgtd
from tests.integration.serve import Serve, tether_serve
from tests.integration.stack import domain_xml
from tether.virt.driver import disk_alias

PROJECT = f"quota-{uuid.uuid4().hex[:6]}"
TOKEN = f"qa-user:{PROJECT}"


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
          libvirtd: None) -> Iterator[Serve]:
    with tether_serve(str(tmp_path_factory.mktemp("quota-serve")), tgtd,
                      extra="max_disk_devices_to_attach = 1\n") as s:
        yield s


@pytest.fixture(scope="module")
def clients(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> Clients:
    ensure_client_venv()
    path = os.path.join(str(tmp_path_factory.mktemp("quota-clients")), "clouds.yaml")
    with open(path, "w") as f:
        f.write(clouds_yaml(serve, {"tether-admin": "admin:admin", "tether-quota": TOKEN}))
    return Clients(serve, path)


# openstacksdk creates a server (the OSC wants an image Tether need not have)
_SDK_SERVER_CREATE = """
import json, sys, openstack
conn = openstack.connect(cloud=sys.argv[1])
try:
    conn.compute.create_server(name="quota-s", flavor_id="1")
    print(json.dumps({"status": None}))
except openstack.exceptions.HttpException as exc:
    print(json.dumps({"status": exc.status_code, "message": str(exc)}))
"""


def _table(rows: list[dict[str, Any]], key: str = "Resource", value: str = "Limit"
           ) -> dict[str, Any]:
    return {r[key]: r[value] for r in rows}


def _refused(clients: Clients, cloud: str, *args: str) -> str:
    """``openstack ARGS`` that must fail: its stderr."""
    proc = subprocess.run([os.path.join(VENV_BIN, "openstack"), "--os-cloud", cloud, *args],
                          env=clients.env(), capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode != 0, proc.stdout
    return proc.stderr


def test_openstack_quota_set_show_limits_and_refusals(clients: Clients, serve: Serve) -> None:
    clients.openstack("quota", "set", "--volumes", "1", "--gigabytes", "5", "--instances",
                      "0", "--cores", "4", PROJECT, cloud="tether-admin")
    compute = _table(clients.openstack("quota", "show", "--compute", PROJECT, "-f", "json",
                                       cloud="tether-admin"))
    assert (compute["instances"], compute["cores"], compute["ram"]) == (0, 4, -1)
    volume = _table(clients.openstack("quota", "show", "--volume", "--usage", PROJECT,
                                      "-f", "json", cloud="tether-quota"))
    assert (volume["volumes"], volume["gigabytes"]) == (1, 5)

    clients.openstack("volume", "create", "--size", "2", "quota-a", "-f", "json",
                      cloud="tether-quota")
    err = _refused(clients, "tether-quota", "volume", "create", "--size", "1", "quota-b")
    assert "VolumeLimitExceeded" in err and "413" in err, err
    refused = clients.sdk(_SDK_SERVER_CREATE, cloud="tether-quota")
    assert refused["status"] == 403, refused
    assert "Quota exceeded for instances: Requested 1, but already used 0 of 0" in refused[
        "message"], refused

    usage = _table(clients.openstack("quota", "show", "--volume", "--usage", PROJECT,
                                     "-f", "json", cloud="tether-quota"), value="In Use")
    assert (usage["volumes"], usage["gigabytes"]) == (1, 2)
    limits = _table(clients.openstack("limits", "show", "--absolute", "-f", "json",
                                      cloud="tether-quota"), key="Name", value="Value")
    assert (limits["max_total_volumes"], limits["total_volumes_used"]) == (1, 1)
    assert (limits["max_total_volume_gigabytes"], limits["total_gigabytes_used"]) == (5, 2)
    assert (limits["max_total_instances"], limits["total_instances_used"]) == (0, 0)
    assert limits["max_total_cores"] == 4

    # a member may not change them
    err = _refused(clients, "tether-quota", "quota", "set", "--volumes", "9", PROJECT)
    assert "403" in err, err
    assert _table(clients.openstack("quota", "show", "--volume", PROJECT, "-f", "json",
                                    cloud="tether-quota"))["volumes"] == 1


def test_cinderclient_quota_usage_and_limits(clients: Clients, serve: Serve) -> None:
    project = f"cq-{uuid.uuid4().hex[:6]}"
    clients.cinder("admin", project, "quota-update", "--volumes", "3", project)
    out = clients.cinder("alice", project, "quota-usage", project)
    row = next(line for line in out.splitlines() if line.startswith("| volumes "))
    assert [c.strip() for c in row.strip("|").split("|")][:4] == ["volumes", "0", "0", "3"]
    out = clients.cinder("alice", project, "absolute-limits")
    cells = {parts[1].strip(): parts[2].strip() for parts in (
        line.split("|") for line in out.splitlines() if line.startswith("|"))}
    assert (cells["maxTotalVolumes"], cells["totalVolumesUsed"]) == ("3", "0"), out


def test_max_disk_devices_to_attach_on_a_real_guest(serve: Serve) -> None:
    """[compute] max_disk_devices_to_attach = 1 (this module's serve): the
    guest (no image, so no root disk) takes one volume; the second attach is
    403 and neither the guest nor the volume changed."""
    token = f"disks:disks-{uuid.uuid4().hex[:6]}"
    with serve.http(token) as c:
        res = c.post(f"{serve.compute_url}/servers",
                     json={"server": {"name": "disks", "flavorRef": "1"}})
        assert res.status_code == 202, res.text
        sid = res.json()["server"]["id"]
        serve.servers.append(sid)  # deleted with the module's serve
        # (a guest may take minutes to start when the machine is loaded)
        wait_for(lambda: c.get(f"{serve.compute_url}/servers/{sid}").json()["server"][
            "status"] == "ACTIVE", 300, f"server {sid} ACTIVE")
        vids = [c.post(f"{serve.volume_url}/volumes", json={"volume": {"size": 1}}).json()[
            "volume"]["id"] for _ in range(2)]
        for vid in vids:
            serve.wait_volume(token, vid, "available")
        attach = f"{serve.compute_url}/servers/{sid}/os-volume_attachments"
        res = c.post(attach, json={"volumeAttachment": {"volumeId": vids[0]}})
        assert res.status_code == 200, res.text
        serve.wait_volume(token, vids[0], "in-use")
        res = c.post(attach, json={"volumeAttachment": {"volumeId": vids[1]}})
        assert res.status_code == 403, res.text
        assert "maximum allowed number of disk devices (1)" in res.json()["forbidden"][
            "message"]
        assert serve.volume(token, vids[1])["status"] == "available"
        assert [a["volumeId"] for a in c.get(attach).json()["volumeAttachments"]] == [vids[0]]
    xml = domain_xml(sid)
    assert disk_alias(vids[0]) in xml and disk_alias(vids[1]) not in xml
