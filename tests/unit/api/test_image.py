"""The Image API (Glance v2-shaped, read-only) and ``imageRef`` = an image id
on server create, with fake drivers."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Tether, wait_for
from tether import config
from tether.db.records import ImageRecord
from tether.image.registry import ImageRegistry
from tether.virt.fake import FakeDriver


def _images_dir(t: Tether) -> Path:
    path = Path(config.images_dir(t.conf))
    path.mkdir(exist_ok=True)
    return path


def _registry(t: Tether) -> ImageRegistry:
    return ImageRegistry(t.db, str(_images_dir(t)))


def _machine(t: Tether, **props: Any) -> tuple[ImageRecord, ...]:
    """kernel (aki) + ramdisk (ari) + the machine image (ami) naming both."""
    reg = _registry(t)
    tag = uuid.uuid4().hex[:6]
    (_images_dir(t) / f"{tag}.vmlinuz").write_bytes(b"kernel")
    (_images_dir(t) / f"{tag}.initrd").write_bytes(b"initrd")
    kernel = reg.register(f"k-{tag}", "aki", f"{tag}.vmlinuz")
    ramdisk = reg.register(f"r-{tag}", "ari", f"{tag}.initrd")
    machine = reg.register(f"m-{tag}", "ami", None, {
        "kernel_id": kernel.id, "ramdisk_id": ramdisk.id, "os_command_line": "console=ttyS0",
        **props})
    return kernel, ramdisk, machine


def test_version_discovery(tether: Tether) -> None:
    client = tether.glance().client
    root = client.simulate_get("/")
    assert root.status_code == 300
    (version,) = root.json["versions"]
    assert version["id"] == "v2.0" and version["links"][0]["href"].endswith("/v2/")
    assert client.simulate_get("/v2").json["version"]["id"] == "v2.0"


def test_list_and_show(tether: Tether) -> None:
    kernel, _ramdisk, machine = _machine(tether)
    glance = tether.glance()
    res = glance.get("/v2/images")
    assert res.status_code == 200
    ids = [i["id"] for i in res.json["images"]]
    assert machine.id in ids and kernel.id in ids
    one = glance.get(f"/v2/images/{machine.id}").json
    assert one["disk_format"] == "ami" and one["container_format"] == "ami"
    assert one["kernel_id"] == kernel.id and one["status"] == "active"
    assert one["self"] == f"/v2/images/{machine.id}" and one["visibility"] == "public"
    k = glance.get(f"/v2/images/{kernel.id}").json
    assert k["size"] == 6 and k["os_hash_algo"] == "sha256" and len(k["os_hash_value"]) == 64
    named = glance.get("/v2/images", headers={}).json["images"]
    assert {i["name"] for i in named} >= {machine.name, kernel.name}
    assert [i["id"] for i in glance.get(f"/v2/images?name={machine.name}").json["images"]] \
        == [machine.id]
    assert all(i["disk_format"] == "aki"
               for i in glance.get("/v2/images?disk_format=aki").json["images"])


def test_pages(tether: Tether) -> None:
    _machine(tether)
    glance = tether.glance()
    everything = [i["id"] for i in glance.get("/v2/images").json["images"]]
    first = glance.get("/v2/images?limit=2").json
    assert [i["id"] for i in first["images"]] == everything[:2]
    assert first["next"] == f"/v2/images?limit=2&marker={everything[1]}"
    rest = glance.get(f"/v2/images?marker={everything[1]}").json
    assert [i["id"] for i in rest["images"]] == everything[2:] and "next" not in rest
    assert glance.get("/v2/images?limit=x").status_code == 400
    assert glance.get(f"/v2/images?marker={uuid.uuid4()}").status_code == 400


def test_private_images_belong_to_their_project(tether: Tether) -> None:
    reg = _registry(tether)
    (_images_dir(tether) / "p.raw").write_bytes(b"\0" * 512)
    private = reg.register("mine", "raw", "p.raw", visibility="private", owner="p1")
    assert tether.glance("alice:p1").get(f"/v2/images/{private.id}").status_code == 200
    assert tether.glance("admin:p9").get(f"/v2/images/{private.id}").status_code == 200
    bob = tether.glance("bob:p2")
    res = bob.get(f"/v2/images/{private.id}")
    assert res.status_code == 404 and "could not be found" in res.json["itemNotFound"]["message"]
    assert private.id not in [i["id"] for i in bob.get("/v2/images").json["images"]]
    res = tether.nova("bob:p2").post("/v2.1/servers", {"server": {
        "name": "x", "flavorRef": "1", "imageRef": private.id}})
    assert res.status_code == 400


@pytest.mark.parametrize("path", ["/v2/images/nope", f"/v2/images/{uuid.uuid4()}"])
def test_unknown_image_is_404(tether: Tether, path: str) -> None:
    res = tether.glance().get(path)
    assert res.status_code == 404 and res.json["itemNotFound"]["code"] == 404


def test_token_required(tether: Tether) -> None:
    res = tether.glance().client.simulate_get("/v2/images")
    assert res.status_code == 401 and "unauthorized" in res.json


def test_server_boots_the_kernel_of_an_image_id(tether: Tether) -> None:
    kernel, ramdisk, machine = _machine(tether)
    nova = tether.nova()
    res = nova.post("/v2.1/servers", {"server": {"name": "k", "flavorRef": "1",
                                                 "imageRef": machine.id}})
    assert res.status_code == 202, res.text
    sid = res.json["server"]["id"]
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "ACTIVE",
             what="ACTIVE")
    assert nova.get(f"/v2.1/servers/{sid}").json["server"]["image"]["id"] == machine.id
    assert isinstance(tether.virt, FakeDriver)
    spec = tether.virt.guests[sid].spec
    assert spec.kernel == str(_images_dir(tether) / f"{kernel.file}")
    assert spec.initrd == str(_images_dir(tether) / f"{ramdisk.file}")
    assert spec.cmdline == "console=ttyS0" and spec.root_disk is None
    assert spec.agent_socket is not None and spec.agent_socket.endswith(f"{sid}/agent.sock")


@pytest.mark.parametrize("which", ["kernel", "unknown"])
def test_image_that_cannot_boot_is_400(tether: Tether, which: str) -> None:
    kernel, _r, _m = _machine(tether)
    ref = kernel.id if which == "kernel" else str(uuid.uuid4())
    res = tether.nova().post("/v2.1/servers", {"server": {"name": "x", "flavorRef": "1",
                                                          "imageRef": ref}})
    assert res.status_code == 400, res.text
    assert ref in res.json["badRequest"]["message"]


def test_hw_disk_bus_of_the_image_picks_the_bus_of_volumes(tether: Tether) -> None:
    _k, _r, machine = _machine(tether, hw_disk_bus="virtio")
    nova, cinder = tether.nova(), tether.api()
    sid = nova.post("/v2.1/servers", {"server": {"name": "b", "flavorRef": "1",
                                                 "imageRef": machine.id}}).json["server"]["id"]
    wait_for(lambda: nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == "ACTIVE",
             what="ACTIVE")
    vid = tether.create_volume(cinder)["id"]
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200, res.text
    assert res.json["volumeAttachment"]["device"] == "/dev/vdb"
    assert not tether.wait_action(nova, sid, "attach_volume")["message"]
    vid2 = tether.create_volume(cinder)["id"]
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid2, "device": "/dev/sdb"}})
    assert res.json["volumeAttachment"]["device"] == "/dev/sdb"  # the request still wins
    wait_for(lambda: cinder.get(f"/v3/volumes/{vid2}").json["volume"]["status"] == "in-use",
             what="second volume attached")
