"""Quota and limits rules of both APIs: Nova's and Cinder's names and
secure-RBAC defaults (a project's readers see its quotas, admins change
them)."""

from __future__ import annotations

from oslo_policy import policy

from tether.policies.base import ADMIN, ANY, PROJECT_READER_OR_ADMIN
from tether.policies.base import rule as _r

VOLUME_SHOW = "volume_extension:quotas:show"
VOLUME_UPDATE = "volume_extension:quotas:update"
VOLUME_DELETE = "volume_extension:quotas:delete"
VOLUME_LIMITS = "limits_extension:used_limits"
COMPUTE = "os_compute_api:os-quota-sets:"
COMPUTE_LIMITS = "os_compute_api:limits"
COMPUTE_LIMITS_OTHER = "os_compute_api:limits:other_project"
GET_PROJECT = "identity:get_project"
LIST_PROJECTS = "identity:list_projects"

_VQ = "/v3/os-quota-sets/{project_id}"
_CQ = "/v2.1/os-quota-sets/{project_id}"

RULES: list[policy.RuleDefault] = [
    _r(VOLUME_SHOW, PROJECT_READER_OR_ADMIN, "Show a project's volume quotas (with "
       "?usage=True its usage) or their defaults.", ("GET", _VQ), ("GET", _VQ + "/defaults")),
    _r(VOLUME_UPDATE, ADMIN, "Set a project's volume quotas.", ("PUT", _VQ)),
    _r(VOLUME_DELETE, ADMIN, "Reset a project's volume quotas to the defaults.",
       ("DELETE", _VQ)),
    _r(VOLUME_LIMITS, PROJECT_READER_OR_ADMIN, "Show the caller's project's volume limits "
       "and usage.", ("GET", "/v3/limits")),
    _r(COMPUTE + "show", PROJECT_READER_OR_ADMIN, "Show a project's compute quotas.",
       ("GET", _CQ)),
    _r(COMPUTE + "detail", PROJECT_READER_OR_ADMIN, "Show a project's compute quotas with "
       "their usage.", ("GET", _CQ + "/detail")),
    _r(COMPUTE + "defaults", ANY, "Show the default compute quotas.",
       ("GET", _CQ + "/defaults")),
    _r(COMPUTE + "update", ADMIN, "Set a project's compute quotas.", ("PUT", _CQ)),
    _r(COMPUTE + "delete", ADMIN, "Reset a project's compute quotas to the defaults.",
       ("DELETE", _CQ)),
    _r(COMPUTE_LIMITS, ANY, "Show the caller's project's compute limits and usage.",
       ("GET", "/v2.1/limits")),
    _r(COMPUTE_LIMITS_OTHER, PROJECT_READER_OR_ADMIN, "Show another project's compute "
       "limits (?tenant_id=).", ("GET", "/v2.1/limits")),
    # what `openstack quota show/set PROJECT` looks the project up with (Keystone's names)
    _r(GET_PROJECT, PROJECT_READER_OR_ADMIN, "Look a project up by id (the project of "
       "the caller's token, or any for an admin).", ("GET", "/identity/v3/projects/"
                                                     "{project_id}")),
    _r(LIST_PROJECTS, ADMIN, "Look a project up by name.", ("GET", "/identity/v3/projects")),
]
