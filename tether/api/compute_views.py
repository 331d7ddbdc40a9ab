"""JSON shapes of the Compute API (Nova v2.1), per microversion."""

from __future__ import annotations

import hashlib
from typing import Any

from tether.api.versions import Version
from tether.api.volume_views import iso
from tether.compute.flavors import Flavor
from tether.db.records import ActionRecord, BdmRecord, EventRecord, InstanceRecord

STATUS = {"building": "BUILD", "active": "ACTIVE", "stopped": "SHUTOFF", "error": "ERROR",
          "shelved": "SHELVED", "shelved_offloaded": "SHELVED_OFFLOADED", "deleted": "DELETED"}


def _links(base: str, kind: str, ident: str) -> list[dict[str, str]]:
    return [{"rel": "self", "href": f"{base}/v2.1/{kind}/{ident}"},
            {"rel": "bookmark", "href": f"{base}/{kind}/{ident}"}]


def flavor_summary(f: Flavor, base: str, version: Version) -> dict[str, Any]:
    body: dict[str, Any] = {"id": f.id, "name": f.name, "links": _links(base, "flavors", f.id)}
    if version.at_least("2.55"):
        body["description"] = None
    return body


def flavor_detail(f: Flavor, base: str, version: Version) -> dict[str, Any]:
    body = flavor_summary(f, base, version)
    body.update({"vcpus": f.vcpus, "ram": f.ram, "disk": f.disk,
                 "OS-FLV-EXT-DATA:ephemeral": 0, "swap": 0 if version.at_least("2.75") else "",
                 "rxtx_factor": 1.0, "os-flavor-access:is_public": True,
                 "OS-FLV-DISABLED:disabled": False})
    if version.at_least("2.61"):
        body["extra_specs"] = {}
    return body


def server_summary(inst: InstanceRecord, base: str) -> dict[str, Any]:
    return {"id": inst.uuid, "name": inst.name, "links": _links(base, "servers", inst.uuid)}


def server_detail(inst: InstanceRecord, bdms: list[BdmRecord],
                  flavor: Flavor | None, base: str, version: Version,
                  show_host: bool) -> dict[str, Any]:
    host_id = hashlib.sha224(f"{inst.project_id}{inst.host or ''}".encode()).hexdigest()
    if version.at_least("2.47"):
        flavor_body: dict[str, Any] = {
            "vcpus": inst.vcpus, "ram": inst.memory_mb, "disk": 0, "ephemeral": 0, "swap": 0,
            "original_name": flavor.name if flavor else inst.flavor_id, "extra_specs": {}}
    else:
        flavor_body = {"id": inst.flavor_id, "links": _links(base, "flavors", inst.flavor_id)}
    body: dict[str, Any] = {
        "id": inst.uuid,
        "name": inst.name,
        "status": STATUS.get(inst.vm_state, inst.vm_state.upper()),
        "tenant_id": inst.project_id,
        "user_id": inst.user_id,
        "metadata": dict(inst.meta or {}),
        "hostId": host_id if inst.host else "",
        "image": ({"id": inst.image_ref, "links": _links(base, "images", inst.image_ref)}
                  if inst.image_ref else ""),
        "flavor": flavor_body,
        "created": iso(inst.created_at)[:19] + "Z",  # type: ignore[index]
        "updated": iso(inst.updated_at or inst.created_at)[:19] + "Z",  # type: ignore[index]
        "addresses": {},
        "accessIPv4": "",
        "accessIPv6": "",
        "links": _links(base, "servers", inst.uuid),
        "OS-DCF:diskConfig": "MANUAL",
        "progress": 0,
        "OS-EXT-AZ:availability_zone": "nova",
        "config_drive": "",
        "key_name": None,
        "OS-SRV-USG:launched_at": iso(inst.created_at),
        "OS-SRV-USG:terminated_at": iso(inst.deleted_at),
        "OS-EXT-STS:task_state": inst.task_state,
        "OS-EXT-STS:vm_state": inst.vm_state,
        "OS-EXT-STS:power_state": inst.power_state,
        "os-extended-volumes:volumes_attached": [
            _volume_attached(b, version) for b in bdms if b.volume_id],
        "security_groups": [{"name": "default"}],
    }
    if version.at_least("2.9"):
        body["locked"] = inst.locked
    if version.at_least("2.19"):
        body["description"] = None
    if version.at_least("2.26"):
        body["tags"] = []
    if version.at_least("2.63"):
        body["trusted_image_certificates"] = None
    if version.at_least("2.71"):
        body["server_groups"] = []
    if version.at_least("2.73"):
        body["locked_reason"] = None
    if version.at_least("2.96"):
        body["pinned_availability_zone"] = None
    if show_host:
        body["OS-EXT-SRV-ATTR:host"] = inst.host
        body["OS-EXT-SRV-ATTR:hypervisor_hostname"] = inst.host
        body["OS-EXT-SRV-ATTR:instance_name"] = f"tether-{inst.uuid}"
    return body


def _volume_attached(bdm: BdmRecord, version: Version) -> dict[str, Any]:
    item: dict[str, Any] = {"id": bdm.volume_id}
    if version.at_least("2.3"):
        item["delete_on_termination"] = bdm.delete_on_termination
    return item


def volume_attachment(bdm: BdmRecord, version: Version,
                      created: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {"id": bdm.volume_id, "serverId": bdm.instance_uuid,
                            "volumeId": bdm.volume_id, "device": bdm.device_name}
    if version.at_least("2.70"):
        body["tag"] = bdm.tag
    if version.at_least("2.79"):
        body["delete_on_termination"] = bdm.delete_on_termination
    if version.at_least("2.89") and not created:
        del body["id"]
        body["attachment_id"] = bdm.attachment_id
        body["bdm_uuid"] = bdm.uuid
    return body


def instance_action(action: ActionRecord, version: Version) -> dict[str, Any]:
    body: dict[str, Any] = {
        "action": action.action, "instance_uuid": action.instance_uuid,
        "message": action.message, "project_id": action.project_id,
        "request_id": action.request_id, "start_time": iso(action.start_time),
        "user_id": action.user_id,
        # Tether's extension: when the whole operation ended (null while running)
        "finish_time": iso(action.finish_time)}
    if version.at_least("2.58"):
        body["updated_at"] = iso(action.updated_at or action.finish_time or action.start_time)
    return body


def action_event(event: EventRecord, version: Version,
                 show_traceback: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"event": event.event, "start_time": iso(event.start_time),
                            "finish_time": iso(event.finish_time), "result": event.result}
    if show_traceback:
        body["traceback"] = event.traceback
    if version.at_least("2.62"):
        body["hostId"] = hashlib.sha224((event.host or "").encode()).hexdigest()
        if show_traceback:
            body["host"] = event.host
    if version.at_least("2.84"):
        body["details"] = event.details
    return body
