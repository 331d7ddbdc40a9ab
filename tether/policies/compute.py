"""Compute API (Nova v2.1) rules: Nova's names and secure-RBAC defaults."""

from __future__ import annotations

from oslo_policy import policy

from tether.policies.base import ADMIN, ANY, PROJECT_MEMBER_OR_ADMIN, PROJECT_READER_OR_ADMIN
from tether.policies.base import rule as _r

SERVERS = "os_compute_api:servers:"
ATTACHMENTS = "os_compute_api:os-volumes-attachments:"
ACTIONS = "os_compute_api:os-instance-actions:"
LOCK = "os_compute_api:os-lock-server:"
SHELVE = "os_compute_api:os-shelve:"
EXTRA_SPECS = "os_compute_api:os-flavor-extra-specs:"
HOST_ATTRIBUTES = "os_compute_api:os-extended-server-attributes"
FLAVORS = "tether:compute:flavors"

_S = "/v2.1/servers/{server_id}"
_VA = _S + "/os-volume_attachments"

RULES: list[policy.RuleDefault] = [
    _r(SERVERS + "index", PROJECT_READER_OR_ADMIN, "List the project's servers.",
       ("GET", "/v2.1/servers")),
    _r(SERVERS + "detail", PROJECT_READER_OR_ADMIN, "List the project's servers with "
       "details.", ("GET", "/v2.1/servers/detail")),
    _r(SERVERS + "index:get_all_tenants", ADMIN, "List every project's servers "
       "(all_tenants).", ("GET", "/v2.1/servers")),
    _r(SERVERS + "detail:get_all_tenants", ADMIN, "List every project's servers with "
       "details (all_tenants).", ("GET", "/v2.1/servers/detail")),
    _r(SERVERS + "show", PROJECT_READER_OR_ADMIN, "Show a server.", ("GET", _S)),
    _r(HOST_ATTRIBUTES, ADMIN, "Show a server's host (OS-EXT-SRV-ATTR:host, "
       "hypervisor_hostname).", ("GET", _S), ("GET", "/v2.1/servers/detail")),
    _r(SERVERS + "create", PROJECT_MEMBER_OR_ADMIN, "Create a server.",
       ("POST", "/v2.1/servers")),
    _r(SERVERS + "create:attach_volume", PROJECT_MEMBER_OR_ADMIN, "Create a server "
       "booting from a volume (block_device_mapping_v2).", ("POST", "/v2.1/servers")),
    _r(SERVERS + "delete", PROJECT_MEMBER_OR_ADMIN, "Delete a server (its volumes are "
       "detached).", ("DELETE", _S)),
    _r(SERVERS + "stop", PROJECT_MEMBER_OR_ADMIN, "Stop a server.",
       ("POST", _S + "/action (os-stop)")),
    _r(SERVERS + "start", PROJECT_MEMBER_OR_ADMIN, "Start a server.",
       ("POST", _S + "/action (os-start)")),
    _r(LOCK + "lock", PROJECT_MEMBER_OR_ADMIN, "Lock a server.",
       ("POST", _S + "/action (lock)")),
    _r(LOCK + "unlock", PROJECT_MEMBER_OR_ADMIN, "Unlock a server.",
       ("POST", _S + "/action (unlock)")),
    _r(LOCK + "unlock:unlock_override", ADMIN, "Unlock a server an admin locked; act on "
       "a locked server.", ("POST", _S + "/action (unlock)")),
    _r(SHELVE + "shelve", PROJECT_MEMBER_OR_ADMIN, "Shelve a server.",
       ("POST", _S + "/action (shelve)")),
    _r(SHELVE + "shelve_offload", ADMIN, "Offload a shelved server from its host.",
       ("POST", _S + "/action (shelveOffload)")),
    _r(SHELVE + "unshelve", PROJECT_MEMBER_OR_ADMIN, "Unshelve a server.",
       ("POST", _S + "/action (unshelve)")),
    _r(ATTACHMENTS + "index", PROJECT_READER_OR_ADMIN, "List a server's volume "
       "attachments (and its tagged devices).", ("GET", _VA),
       ("GET", _S + "/device-metadata")),
    _r(ATTACHMENTS + "show", PROJECT_READER_OR_ADMIN, "Show a volume attachment.",
       ("GET", _VA + "/{volume_id}")),
    _r(ATTACHMENTS + "create", PROJECT_MEMBER_OR_ADMIN, "Attach a volume to a server.",
       ("POST", _VA)),
    _r(ATTACHMENTS + "update", PROJECT_MEMBER_OR_ADMIN, "Update a volume attachment's "
       "delete_on_termination.", ("PUT", _VA + "/{volume_id}")),
    _r(ATTACHMENTS + "delete", PROJECT_MEMBER_OR_ADMIN, "Detach a volume from a server.",
       ("DELETE", _VA + "/{volume_id}")),
    _r(ACTIONS + "list", PROJECT_READER_OR_ADMIN, "List a server's actions.",
       ("GET", _S + "/os-instance-actions")),
    _r(ACTIONS + "show", PROJECT_READER_OR_ADMIN, "Show a server's action and its "
       "events.", ("GET", _S + "/os-instance-actions/{request_id}")),
    _r(ACTIONS + "events", ADMIN, "Include each failed event's traceback.",
       ("GET", _S + "/os-instance-actions/{request_id}")),
    _r(FLAVORS, ANY, "List and show flavors (Nova checks no rule: any authenticated "
       "caller).", ("GET", "/v2.1/flavors"), ("GET", "/v2.1/flavors/detail"),
       ("GET", "/v2.1/flavors/{flavor_id}")),
    _r(EXTRA_SPECS + "index", PROJECT_READER_OR_ADMIN, "List a flavor's extra specs.",
       ("GET", "/v2.1/flavors/{flavor_id}/os-extra_specs")),
    _r(EXTRA_SPECS + "show", PROJECT_READER_OR_ADMIN, "Show one extra spec of a flavor.",
       ("GET", "/v2.1/flavors/{flavor_id}/os-extra_specs/{key}")),
]
