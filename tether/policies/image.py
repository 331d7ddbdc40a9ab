"""Image API (Glance v2, read-only) rules: Glance's names."""

from __future__ import annotations

from oslo_policy import policy

from tether.policies.base import PROJECT_READER_OR_ADMIN
from tether.policies.base import rule as _r

RULES: list[policy.RuleDefault] = [
    _r("get_images", PROJECT_READER_OR_ADMIN, "List images (public ones and the "
       "project's own).", ("GET", "/v2/images")),
    _r("get_image", PROJECT_READER_OR_ADMIN, "Show an image: the target is its owner's "
       "project, or the caller's own for a public image.", ("GET", "/v2/images/{image_id}")),
]
