"""Compute API (Nova v2.1) request schemas, per microversion where Nova's
bodies differ."""

from __future__ import annotations

from tether.api.name_filter import MAX_PATTERN
from tether.api.schemas import (
    NO_ARGUMENTS,
    QUERY_BOOLEAN,
    UUID,
    Schema,
    actions,
    nullable,
    string,
)
from tether.api.validation import Body, Query

_BDM: Schema = {
    "type": "object", "maxProperties": 32,
    "properties": {
        "boot_index": nullable({"anyOf": [{"type": "integer"},
                                          {"type": "string", "pattern": "^-?[0-9]{1,9}$"}]}),
        "source_type": {"type": "string", "enum": ["volume", "image", "snapshot", "blank"]},
        "destination_type": {"type": "string", "enum": ["volume", "local"]},
        "uuid": nullable(string(255)),
        "delete_on_termination": {"type": "boolean"},
        "volume_size": nullable({"anyOf": [{"type": "integer", "minimum": 0},
                                           {"type": "string", "pattern": "^[0-9]{1,9}$"}]}),
        "device_name": nullable(string()),
        "disk_bus": nullable(string()),
        "device_type": nullable(string()),
        "guest_format": nullable(string()),
        "tag": nullable(string(60)),
        "volume_type": nullable(string()),
    },
}
# the members Nova's server create takes: Tether reads name, flavorRef,
# imageRef and block_device_mapping_v2 and ignores the others, as a cloud
# without networks or key pairs can
_NOVA_SERVER_EXTRAS = (
    "adminPass", "metadata", "networks", "OS-DCF:diskConfig", "accessIPv4", "accessIPv6",
    "personality", "block_device_mapping", "security_groups", "user_data",
    "availability_zone", "key_name", "config_drive", "min_count", "max_count",
    "return_reservation_id", "description", "tags", "trusted_image_certificates", "host",
    "hypervisor_hostname", "hostname")
SERVER_CREATE = Body.of({
    "type": "object", "required": ["server"], "additionalProperties": False,
    "properties": {
        "server": {
            "type": "object", "required": ["name", "flavorRef"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1, "maxLength": 255,
                         "pattern": "[^\\s]"},
                "flavorRef": {"anyOf": [string(255, 1), {"type": "integer"}]},
                "imageRef": nullable(string(255)),
                "block_device_mapping_v2": {"type": "array", "maxItems": 32, "items": _BDM},
                **{k: {} for k in _NOVA_SERVER_EXTRAS},
            },
        },
        "os:scheduler_hints": {"type": "object"},
        "OS-SCH-HNT:scheduler_hints": {"type": "object"},
    },
})

SERVER_LIST = Query({"name": string(MAX_PATTERN), "all_tenants": QUERY_BOOLEAN})

SERVER_ACTION_ARGS: dict[str, Schema] = {
    "os-stop": NO_ARGUMENTS,
    "os-start": NO_ARGUMENTS,
    "lock": {"type": ["object", "null"],
             "properties": {"locked_reason": nullable(string())}},
    "unlock": NO_ARGUMENTS,
    "shelve": NO_ARGUMENTS,
    "shelveOffload": NO_ARGUMENTS,
    "unshelve": {"type": ["object", "null"],
                 "properties": {"availability_zone": nullable(string()),
                                "host": nullable(string())}},
}
SERVER_ACTION = Body.of(actions(SERVER_ACTION_ARGS))

# Nova's device pattern: /dev/ and a disk name
_DEVICE = nullable({"type": "string", "maxLength": 255,
                    "pattern": "(^/dev/x{0,1}[a-z]{0,1}d{0,1})([a-z]+)[0-9]*$"})
_TAG = {"type": "string", "minLength": 1, "maxLength": 60, "pattern": "^[^,/]*$"}


def _attach(*extra: str) -> Schema:
    props: Schema = {"volumeId": UUID, "device": _DEVICE}
    if "tag" in extra:
        props["tag"] = _TAG
    if "delete_on_termination" in extra:
        props["delete_on_termination"] = {"type": "boolean"}
    return {"type": "object", "required": ["volumeAttachment"], "additionalProperties": False,
            "properties": {"volumeAttachment": {
                "type": "object", "required": ["volumeId"], "additionalProperties": False,
                "properties": props}}}


VOLUME_ATTACH = Body((("2.1", _attach()), ("2.49", _attach("tag")),
                      ("2.79", _attach("tag", "delete_on_termination"))))


def _update(full: bool) -> Schema:
    props: Schema = {"volumeId": UUID}
    if full:  # 2.85: the whole attachment may be sent back, only this changes
        props.update({"delete_on_termination": {"type": "boolean"}, "device": _DEVICE,
                      "tag": nullable(_TAG), "serverId": UUID, "id": UUID})
    return {"type": "object", "required": ["volumeAttachment"], "additionalProperties": False,
            "properties": {"volumeAttachment": {
                "type": "object", "required": ["volumeId"], "additionalProperties": False,
                "properties": props}}}


VOLUME_ATTACHMENT_UPDATE = Body((("2.1", _update(False)), ("2.85", _update(True))))
