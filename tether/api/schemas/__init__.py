"""JSON schemas of the REST APIs' requests, one module per API area; the
handlers validate with them (``tether.api.validation``) and ``/openapi.json``
publishes them.  This module holds the types the areas share."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

UUID: Schema = {"type": "string", "format": "uuid", "maxLength": 36}
NULLABLE_UUID: Schema = {"anyOf": [UUID, {"type": "null"}]}


def string(max_length: int = 255, min_length: int = 0) -> Schema:
    return {"type": "string", "minLength": min_length, "maxLength": max_length}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


# oslo.strutils' spellings, as Nova's and Cinder's ``boolean`` parameter type
BOOLEAN_STRINGS = ("1", "t", "true", "on", "y", "yes", "0", "f", "false", "off", "n", "no",
                   "True", "False", "TRUE", "FALSE", "Yes", "No", "YES", "NO")
BOOLEAN: Schema = {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": list(
    BOOLEAN_STRINGS)}]}

METADATA: Schema = {
    "type": "object", "maxProperties": 128,
    "propertyNames": {"type": "string", "minLength": 1, "maxLength": 255},
    "additionalProperties": {"type": "string", "maxLength": 255},
}

# an os-brick connector: what Tether reads is typed, the rest (wwpns, nqn...)
# is passed over
CONNECTOR: Schema = {
    "type": "object", "required": ["initiator"], "maxProperties": 64,
    "properties": {
        "initiator": string(223, 1),
        "host": nullable(string()),
        "ip": nullable(string()),
        "multipath": BOOLEAN,
        "platform": nullable(string()),
        "os_type": nullable(string()),
        "connector_type": nullable(string()),
        "mountpoint": nullable(string()),
    },
}

NO_ARGUMENTS: Schema = {"type": ["object", "null"]}
"""An action that takes nothing: ``{"os-reserve": null}`` or ``{...: {}}``
(members are ignored, as Nova and Cinder do)."""

# query parameters (``integer`` and ``boolean`` are converted from text)
LIMIT: Schema = {"type": "integer", "minimum": 0, "maximum": 1000000}
MARKER: Schema = string(255, 1)
QUERY_BOOLEAN: Schema = {"type": "boolean"}


def actions(table: dict[str, Schema]) -> Schema:
    """A POST .../action body: exactly one member, named in ``table``, whose
    value is validated by the schema the table gives it."""
    return {"type": "object", "minProperties": 1, "maxProperties": 1,
            "properties": table, "additionalProperties": False}
