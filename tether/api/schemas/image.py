"""Image API (Glance v2, read-only) query schemas."""

from __future__ import annotations

from tether.api.schemas import LIMIT, MARKER, string
from tether.api.validation import Query

IMAGE_LIST = Query({
    "name": string(), "status": string(), "visibility": string(), "disk_format": string(),
    "limit": LIMIT, "marker": MARKER,
})
