"""Block Storage API (Cinder v3) rules: Cinder's names and secure-RBAC defaults
(Cinder's "admin_api" is the admin role here)."""

from __future__ import annotations

from oslo_policy import policy

from tether.policies.base import (
    ADMIN,
    PROJECT_MEMBER_OR_ADMIN,
    PROJECT_READER_OR_ADMIN,
    SERVICE_OR_ADMIN,
)
from tether.policies.base import rule as _r

ACTIONS = "volume_extension:volume_actions:"
ADMIN_ACTIONS = "volume_extension:volume_admin_actions:"
HOST_ATTRIBUTE = "volume_extension:volume_host_attribute"
ALL_PROJECTS = "tether:volume:all_projects"
SEE_CHAP_SECRET = "tether:volume:see_chap_secret"  # noqa: S105 - a rule name
ATTACHMENT_GET = "tether:volume:attachment_get"
ATTACHMENT_GET_ALL = "tether:volume:attachment_get_all"

_V = "/v3/volumes/{volume_id}"
_A = "/v3/attachments/{attachment_id}"


def _action(name: str, check: str, what: str, action: str) -> policy.RuleDefault:
    return _r(name, check, what, ("POST", f"{_V}/action ({action})"))


RULES: list[policy.RuleDefault] = [
    _r("volume:get_all", PROJECT_READER_OR_ADMIN, "List the project's volumes.",
       ("GET", "/v3/volumes"), ("GET", "/v3/volumes/detail")),
    _r(ALL_PROJECTS, ADMIN, "List every project's volumes or attachments (all_tenants; "
       "anyone else gets their own project's, as in Cinder).",
       ("GET", "/v3/volumes"), ("GET", "/v3/volumes/detail"), ("GET", "/v3/attachments"),
       ("GET", "/v3/attachments/detail")),
    _r("volume:create", PROJECT_MEMBER_OR_ADMIN, "Create a volume.", ("POST", "/v3/volumes")),
    _r("volume:get", PROJECT_READER_OR_ADMIN, "Show a volume.", ("GET", _V)),
    _r(HOST_ATTRIBUTE, ADMIN, "Show a volume's host (os-vol-host-attr:host).",
       ("GET", _V), ("GET", "/v3/volumes/detail")),
    _r("volume:update", PROJECT_MEMBER_OR_ADMIN, "Update a volume's name, description or "
       "metadata.", ("PUT", _V)),
    _r("volume:delete", PROJECT_MEMBER_OR_ADMIN, "Delete a volume.", ("DELETE", _V)),
    _action(ACTIONS + "reserve", PROJECT_MEMBER_OR_ADMIN, "Reserve a volume.",
            "os-reserve"),
    _action(ACTIONS + "unreserve", PROJECT_MEMBER_OR_ADMIN, "Unreserve a volume.",
            "os-unreserve"),
    _action(ACTIONS + "begin_detaching", PROJECT_MEMBER_OR_ADMIN, "Begin detaching a "
            "volume.", "os-begin_detaching"),
    _action(ACTIONS + "roll_detaching", PROJECT_MEMBER_OR_ADMIN, "Roll back a detach.",
            "os-roll_detaching"),
    _action(ACTIONS + "initialize_connection", PROJECT_MEMBER_OR_ADMIN, "Export a volume "
            "to a host's connector.", "os-initialize_connection"),
    _action(ACTIONS + "terminate_connection", PROJECT_MEMBER_OR_ADMIN, "Stop exporting a "
            "volume to a connector (refused while a server uses it, unless a service "
            "asks: CVE-2023-2088).", "os-terminate_connection"),
    _action(ACTIONS + "attach", PROJECT_MEMBER_OR_ADMIN, "Mark a volume attached.",
            "os-attach"),
    _action(ACTIONS + "detach", PROJECT_MEMBER_OR_ADMIN, "Detach a volume (refused while "
            "a server uses it, unless a service asks: CVE-2023-2088).", "os-detach"),
    _action(ADMIN_ACTIONS + "reset_status", ADMIN, "Reset a volume's status.",
            "os-reset_status"),
    _action(ADMIN_ACTIONS + "force_detach", ADMIN, "Drop a volume's attachments and "
            "export (refused while a server uses one, unless a service asks).",
            "os-force_detach"),
    _r(SEE_CHAP_SECRET, SERVICE_OR_ADMIN, "See the CHAP secret in connection_info "
       "(everyone else gets it without auth_password).",
       ("POST", "/v3/attachments"), ("GET", _A), ("PUT", _A),
       ("POST", f"{_V}/action (os-initialize_connection)")),
    _r("volume_extension:type_get_all", PROJECT_READER_OR_ADMIN, "List volume types.",
       ("GET", "/v3/types")),
    _r("volume_extension:type_get", PROJECT_READER_OR_ADMIN, "Show a volume type.",
       ("GET", "/v3/types/{type_id}")),
    _r("volume_extension:types_extra_specs:index", PROJECT_READER_OR_ADMIN, "List a "
       "volume type's extra specs.", ("GET", "/v3/types/{type_id}/extra_specs")),
    _r(ATTACHMENT_GET_ALL, PROJECT_READER_OR_ADMIN, "List the project's attachments "
       "(Cinder checks no rule: its project's).", ("GET", "/v3/attachments"),
       ("GET", "/v3/attachments/detail")),
    _r(ATTACHMENT_GET, PROJECT_READER_OR_ADMIN, "Show an attachment (Cinder checks no "
       "rule: its project's).", ("GET", _A)),
    _r("volume:attachment_create", PROJECT_MEMBER_OR_ADMIN, "Create an attachment.",
       ("POST", "/v3/attachments")),
    _r("volume:attachment_update", PROJECT_MEMBER_OR_ADMIN, "Update an attachment with a "
       "connector (export the volume).", ("PUT", _A)),
    _r("volume:attachment_delete", PROJECT_MEMBER_OR_ADMIN, "Delete an attachment "
       "(refused while a server uses it, unless a service asks: CVE-2023-2088).",
       ("DELETE", _A)),
    _r("volume:attachment_complete", PROJECT_MEMBER_OR_ADMIN, "Mark an attachment in use.",
       ("POST", f"{_A}/action (os-complete)")),
]
