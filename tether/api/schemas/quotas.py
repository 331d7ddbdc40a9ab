"""Quota request schemas of both APIs (``PUT os-quota-sets/{project}``)."""

from __future__ import annotations

from tether import config
from tether.api.schemas import BOOLEAN, QUERY_BOOLEAN, Schema, string
from tether.api.validation import Body, Query
from tether.volume.repository import DEFAULT_TYPE

MAX_LIMIT = 0x7FFFFFFF  # the databases' largest INT, as Nova and Cinder cap it
# a limit: -1 (unlimited) or more, as a number or its decimal digits
LIMIT: Schema = {"anyOf": [
    {"type": "integer", "minimum": -1, "maximum": MAX_LIMIT},
    {"type": "string", "pattern": "^(-1|[0-9]{1,10})$"},
]}
# what clients send besides the limits, and both services ignore
_IGNORED = {"id": string(), "tenant_id": string(), "project_id": string()}

VOLUME_RESOURCES = (*config.BLOCK_STORAGE_QUOTAS,
                    *(f"{r}_{DEFAULT_TYPE}" for r in ("volumes", "gigabytes", "snapshots")))
COMPUTE_RESOURCES = config.COMPUTE_QUOTAS


def _update(resources: tuple[str, ...], **extra: Schema) -> Body:
    return Body.of({
        "type": "object", "required": ["quota_set"], "additionalProperties": False,
        "properties": {"quota_set": {
            "type": "object", "additionalProperties": False,
            "properties": {**{r: LIMIT for r in resources}, **_IGNORED, **extra},
        }},
    })


VOLUME_QUOTA_UPDATE = _update(VOLUME_RESOURCES)
# Nova's: ``force`` sets a limit below what the project already uses
COMPUTE_QUOTA_UPDATE = _update(COMPUTE_RESOURCES, force=BOOLEAN)

VOLUME_QUOTA_SHOW = Query({"usage": QUERY_BOOLEAN})
COMPUTE_QUOTA_SHOW = Query({"user_id": string(255, 1)})
COMPUTE_LIMITS = Query({"tenant_id": string(255, 1)})
PROJECT_LIST = Query({"name": string(255, 1)})
