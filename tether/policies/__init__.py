"""The default policy rules of every Tether API, as oslo.policy defaults.

Rule names are Nova's (``os_compute_api:...``), Cinder's (``volume:...``,
``volume_extension:...``) and Glance's (``get_image``) where those services
have the operation; rules only Tether has start with ``tether:``.  The check
strings follow the services' current secure-RBAC defaults: project scope,
``reader`` may look, ``member`` may change, ``admin`` may do anything in any
project, ``service`` is Tether's own services.
"""

from __future__ import annotations

from oslo_policy import policy

from tether.policies import base, block_storage, compute, image, quotas

PUBLIC = ("/", "/v2", "/v2.1", "/v3", "/openapi.json", "/identity", "/identity/v3")
"""Paths served without a token (version documents, the OpenAPI documents,
the static identity discovery documents): no rule applies."""


def list_rules() -> list[policy.RuleDefault]:
    """Every default, base rules first (what ``tether policy generate`` writes)."""
    return [*base.RULES, *compute.RULES, *block_storage.RULES, *image.RULES,
            *quotas.RULES]
