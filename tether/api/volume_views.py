"""JSON shapes of the Block Storage API (Cinder v3), per microversion."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tether.api import volume_types
from tether.api.versions import Version
from tether.connection import ConnectionInfo
from tether.db.records import AttachmentRecord, VolumeRecord


def iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%f")


def volume_links(base: str, project_id: str, volume_id: str) -> list[dict[str, str]]:
    return [
        {"rel": "self", "href": f"{base}/v3/{project_id}/volumes/{volume_id}"},
        {"rel": "bookmark", "href": f"{base}/{project_id}/volumes/{volume_id}"},
    ]


def volume_summary(vol: VolumeRecord, base: str) -> dict[str, Any]:
    return {"id": vol.id, "name": vol.name,
            "links": volume_links(base, vol.project_id, vol.id)}


def volume_detail(vol: VolumeRecord, attachments: list[AttachmentRecord],
                  version: Version, base: str, admin: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": vol.id,
        "name": vol.name,
        "status": vol.status,
        "size": vol.size,
        "availability_zone": vol.availability_zone,
        "created_at": iso(vol.created_at),
        "updated_at": iso(vol.updated_at),
        "description": vol.description,
        "volume_type": volume_types.NAME,
        "snapshot_id": None,
        "source_volid": None,
        "metadata": dict(vol.meta or {}),
        "links": volume_links(base, vol.project_id, vol.id),
        "user_id": vol.user_id,
        "bootable": "false",
        "encrypted": False,
        "replication_status": None,
        "consistencygroup_id": None,
        "multiattach": vol.multiattach,
        "migration_status": None,
        "attachments": [volume_attachment_entry(a, vol) for a in attachments
                        if a.attach_status == "attached"],
        "os-vol-tenant-attr:tenant_id": vol.project_id,
    }
    if admin:
        body["os-vol-host-attr:host"] = vol.host
    if version.at_least("3.13"):
        body["group_id"] = None
    if version.at_least("3.21"):
        body["provider_id"] = None
    if version.at_least("3.48"):
        body["shared_targets"] = vol.shared_targets
        body["service_uuid"] = vol.service_uuid
    if version.at_least("3.63"):
        body["volume_type_id"] = volume_types.ID
    if version.at_least("3.65"):
        body["consumes_quota"] = True
    return body


def volume_attachment_entry(att: AttachmentRecord, vol: VolumeRecord) -> dict[str, Any]:
    """An item of a volume's ``attachments`` list."""
    return {
        "id": vol.id,
        "attachment_id": att.id,
        "volume_id": vol.id,
        "server_id": att.instance_uuid,
        "host_name": att.attached_host,
        "device": att.mountpoint,
        "attached_at": iso(att.attached_at),
    }


def attachment_summary(att: AttachmentRecord) -> dict[str, Any]:
    return {"id": att.id, "status": att.attach_status, "instance": att.instance_uuid,
            "volume_id": att.volume_id}


def attachment_detail(att: AttachmentRecord, info: ConnectionInfo | None,
                      with_secret: bool) -> dict[str, Any]:
    body = attachment_summary(att)
    body.update({
        "attached_at": iso(att.attached_at),
        "detached_at": iso(att.detached_at),
        "attach_mode": att.attach_mode,
        "connection_info": ({} if info is None else info.to_dict(with_secret=with_secret)),
    })
    if info is not None:  # Cinder returns connection_info flattened
        flat: dict[str, Any] = dict(body["connection_info"]["data"])
        flat["driver_volume_type"] = body["connection_info"]["driver_volume_type"]
        body["connection_info"] = flat
    return body
