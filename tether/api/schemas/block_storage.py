"""Block Storage API (Cinder v3) request schemas."""

from __future__ import annotations

from tether.api.schemas import (
    BOOLEAN,
    CONNECTOR,
    LIMIT,
    MARKER,
    METADATA,
    NO_ARGUMENTS,
    NULLABLE_UUID,
    QUERY_BOOLEAN,
    UUID,
    Schema,
    actions,
    nullable,
    string,
)
from tether.api.validation import Body, Query
from tether.volume.api import MAX_SIZE_GIB

# Cinder takes the size as a number or as its decimal digits
SIZE: Schema = {"anyOf": [
    {"type": "integer", "minimum": 1, "maximum": MAX_SIZE_GIB},
    {"type": "string", "pattern": "^[0-9]{1,9}$"},
]}
DESCRIPTION = nullable(string(65535))

# what cinderclient and openstacksdk may send, Tether's or not: those Tether
# cannot honour are refused by the handler with a reason when not null
_UNSUPPORTED_SOURCES = ("snapshot_id", "source_volid", "imageRef", "image_id", "backup_id")
VOLUME_CREATE = Body.of({
    "type": "object", "required": ["volume"], "additionalProperties": False,
    "properties": {
        "volume": {
            "type": "object", "required": ["size"], "additionalProperties": False,
            "properties": {
                "size": SIZE,
                "name": nullable(string()),
                "description": DESCRIPTION,
                "metadata": nullable(METADATA),
                "multiattach": BOOLEAN,
                "volume_type": nullable(string()),
                "availability_zone": nullable(string()),
                "consistencygroup_id": NULLABLE_UUID,
                "group_id": NULLABLE_UUID,
                **{k: nullable(string()) for k in _UNSUPPORTED_SOURCES},
            },
        },
        "OS-SCH-HNT:scheduler_hints": nullable({"type": "object"}),
    },
})

VOLUME_UPDATE = Body.of({
    "type": "object", "required": ["volume"], "additionalProperties": False,
    "properties": {"volume": {
        "type": "object", "minProperties": 1, "additionalProperties": False,
        "properties": {"name": nullable(string()), "description": DESCRIPTION,
                       "metadata": nullable(METADATA)},
    }},
})

_STATUS = string(255, 1)
VOLUME_LIST = Query({
    "name": string(), "status": _STATUS, "project_id": string(255, 1),
    "all_tenants": QUERY_BOOLEAN, "all_projects": QUERY_BOOLEAN,
    "limit": LIMIT, "marker": MARKER,
})

_CONNECTION = {"type": "object", "required": ["connector"],
               "properties": {"connector": CONNECTOR}}
_ATTACHMENT_ID = {"type": ["object", "null"],
                  "properties": {"attachment_id": NULLABLE_UUID,
                                 "connector": nullable({"type": "object"})}}
VOLUME_ACTION_ARGS: dict[str, Schema] = {
    "os-reserve": NO_ARGUMENTS,
    "os-unreserve": NO_ARGUMENTS,
    "os-begin_detaching": NO_ARGUMENTS,
    "os-roll_detaching": NO_ARGUMENTS,
    "os-initialize_connection": _CONNECTION,
    "os-terminate_connection": _CONNECTION,
    "os-attach": {
        "type": "object",
        "anyOf": [{"required": ["instance_uuid"]}, {"required": ["host_name"]}],
        "properties": {"instance_uuid": NULLABLE_UUID, "host_name": nullable(string()),
                       "mountpoint": nullable(string()),
                       "mode": {"type": "string", "enum": ["rw", "ro"]}},
    },
    "os-detach": _ATTACHMENT_ID,
    "os-reset_status": {
        "type": "object", "minProperties": 1,
        "properties": {"status": nullable(_STATUS), "attach_status": nullable(_STATUS),
                       "migration_status": nullable(_STATUS)},
    },
    "os-force_detach": _ATTACHMENT_ID,
}
VOLUME_ACTION = Body.of(actions(VOLUME_ACTION_ARGS))

_ATTACHMENT_CREATE: Schema = {
    "volume_uuid": UUID, "instance_uuid": NULLABLE_UUID, "connector": nullable(CONNECTOR)}


def _attachment_create(mode: bool) -> Schema:
    props: Schema = dict(_ATTACHMENT_CREATE)
    if mode:
        props["mode"] = {"type": "string", "enum": ["rw", "ro"]}
    return {"type": "object", "required": ["attachment"], "additionalProperties": False,
            "properties": {"attachment": {"type": "object", "required": ["volume_uuid"],
                                          "additionalProperties": False,
                                          "properties": props}}}


ATTACHMENT_CREATE = Body((("3.27", _attachment_create(False)),
                          ("3.54", _attachment_create(True))))
ATTACHMENT_UPDATE = Body.of({
    "type": "object", "required": ["attachment"], "additionalProperties": False,
    "properties": {"attachment": {"type": "object", "required": ["connector"],
                                  "additionalProperties": False,
                                  "properties": {"connector": CONNECTOR}}},
})
ATTACHMENT_ACTION = Body.of(actions({"os-complete": NO_ARGUMENTS}))
ATTACHMENT_LIST = Query({
    "volume_id": string(255, 1), "instance_id": string(255, 1), "status": _STATUS,
    "all_tenants": QUERY_BOOLEAN, "all_projects": QUERY_BOOLEAN,
})
