"""Quotas and limits of both APIs: Cinder's ``os-quota-sets`` and
``/limits`` on the Block Storage API, Nova's on the Compute API (their
shapes, their policies).  The limits and usage come from
:class:`tether.quota.Quotas` (usage counted from the rows, never stored)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import falcon

from tether.api import errors, wsgi
from tether.api.openapi import Operation
from tether.api.schemas import quotas as schemas
from tether.api.validation import body_of, query_of, validated
from tether.policies import quotas as rules
from tether.policy import authorize
from tether.quota import OverQuota, Quotas, QuotaSet

VOLUME_COLLECTIONS = ("os-quota-sets", "limits")
COMPUTE_COLLECTIONS = ("os-quota-sets", "limits")
_IGNORED = ("id", "tenant_id", "project_id", "force")


def _values(data: Mapping[str, Any]) -> dict[str, int]:
    """The limits of a (schema-checked) ``quota_set`` body."""
    return {k: int(v) for k, v in data.items() if k not in _IGNORED}


def _update(quotas: Quotas, project_id: str, values: dict[str, int], force: bool,
            service: str) -> QuotaSet:
    """Set the limits; a limit below the usage is a 400 in the service's words."""
    try:
        return quotas.update(project_id, values, force)
    except OverQuota as exc:
        e = exc.excess
        if service == "volume":
            raise errors.bad_request(
                f"Quota limit invalid for project '{project_id}' for resource '{e.resource}': "
                f"limit of {e.limit} must be greater than or equal to already used and "
                f"reserved {e.used}.") from None
        raise errors.bad_request(
            f"Quota limit {e.limit} for {e.resource} must be greater than or equal to "
            f"already used and reserved {e.used}; delete some first, or set \"force\": "
            "true.") from None


def _detail(qs: QuotaSet) -> dict[str, Any]:
    return {r: {"limit": limit, "in_use": qs.usage[r], "reserved": 0}
            for r, limit in qs.limits.items()}


# -- Block Storage (Cinder) -------------------------------------------------

class VolumeQuotaSet:
    """``/v3/{project_id}/os-quota-sets/{project_id}`` (``?usage=True``:
    each resource as limit, in_use, reserved, allocated)."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    @validated(query=schemas.VOLUME_QUOTA_SHOW)
    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.VOLUME_SHOW, project_id)
        qs = self.quotas.show(project_id)
        body: dict[str, Any]
        if query_of(req).get("usage"):
            body = {r: {**v, "allocated": 0} for r, v in _detail(qs).items()}
        else:
            body = dict(qs.limits)
        wsgi.reply(resp, 200, {"quota_set": {**body, "id": project_id}})

    @validated(body=schemas.VOLUME_QUOTA_UPDATE)
    def on_put(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.VOLUME_UPDATE, project_id)
        values = _values(body_of(req)["quota_set"])
        qs = _update(self.quotas, project_id, values, False, "volume")
        wsgi.reply(resp, 200, {"quota_set": qs.limits})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.VOLUME_DELETE, project_id)
        self.quotas.delete(project_id)
        wsgi.reply(resp, 200)


class VolumeQuotaDefaults:
    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.VOLUME_SHOW, project_id)
        wsgi.reply(resp, 200, {"quota_set": {**self.quotas.defaults, "id": project_id}})


class VolumeLimits:
    """``/v3/{project_id}/limits``: the caller's project's."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        authorize(ctx, rules.VOLUME_LIMITS, ctx.project_id)
        qs = self.quotas.show(ctx.project_id)
        lim, use = qs.limits, qs.usage
        absolute = {
            "maxTotalVolumes": lim["volumes"], "totalVolumesUsed": use["volumes"],
            "maxTotalVolumeGigabytes": lim["gigabytes"],
            "totalGigabytesUsed": use["gigabytes"],
            "maxTotalSnapshots": lim["snapshots"], "totalSnapshotsUsed": use["snapshots"],
            "maxTotalBackups": lim["backups"], "totalBackupsUsed": use["backups"],
            "maxTotalBackupGigabytes": lim["backup_gigabytes"],
            "totalBackupGigabytesUsed": use["backup_gigabytes"],
        }
        wsgi.reply(resp, 200, {"limits": {"rate": [], "absolute": absolute}})


def add_volume_routes(app: wsgi.WsgiApp, quotas: Quotas) -> None:
    app.add_route("/v3/os-quota-sets/{project_id}", VolumeQuotaSet(quotas))
    app.add_route("/v3/os-quota-sets/{project_id}/defaults", VolumeQuotaDefaults(quotas))
    app.add_route("/v3/limits", VolumeLimits(quotas))


_VQ = "/v3/os-quota-sets/{project_id}"
VOLUME_OPERATIONS = (
    Operation("GET", _VQ, "Show a project's quotas (?usage=True: with usage)", 200,
              query=schemas.VOLUME_QUOTA_SHOW),
    Operation("PUT", _VQ, "Set a project's quotas (-1: unlimited; not below its usage)",
              200, body=schemas.VOLUME_QUOTA_UPDATE),
    Operation("DELETE", _VQ, "Reset a project's quotas to the defaults", 200),
    Operation("GET", _VQ + "/defaults", "The default quotas", 200),
    Operation("GET", "/v3/limits", "The caller's project's absolute limits and usage", 200),
)


# -- Compute (Nova) ----------------------------------------------------------

# what Nova shows before microversion 2.57 (injected files) and 2.36 (the
# network proxies): fixed values, Tether has neither
_BEFORE_2_57 = {"injected_files": 5, "injected_file_content_bytes": 10240,
                "injected_file_path_bytes": 255}
_BEFORE_2_36 = {"floating_ips": 10, "fixed_ips": -1, "security_groups": 10,
                "security_group_rules": 20}


def _compute_extra(req: falcon.Request) -> dict[str, int]:
    version = wsgi.version(req)
    out: dict[str, int] = {}
    if not version.at_least("2.57"):
        out.update(_BEFORE_2_57)
    if not version.at_least("2.36"):
        out.update(_BEFORE_2_36)
    return out


class ComputeQuotaSet:
    """``/v2.1/os-quota-sets/{project_id}`` (Nova calls it tenant_id)."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    @validated(query=schemas.COMPUTE_QUOTA_SHOW)
    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.COMPUTE + "show", project_id)
        qs = self.quotas.show(project_id)
        wsgi.reply(resp, 200, {"quota_set": {**qs.limits, **_compute_extra(req),
                                             "id": project_id}})

    @validated(body=schemas.COMPUTE_QUOTA_UPDATE)
    def on_put(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.COMPUTE + "update", project_id)
        data = body_of(req)["quota_set"]
        force = str(data.get("force", False)).lower() in ("1", "t", "true", "on", "y", "yes")
        qs = _update(self.quotas, project_id, _values(data), force, "compute")
        wsgi.reply(resp, 200, {"quota_set": {**qs.limits, **_compute_extra(req)}})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.COMPUTE + "delete", project_id)
        self.quotas.delete(project_id)
        wsgi.reply(resp, 202)


class ComputeQuotaDetail:
    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    @validated(query=schemas.COMPUTE_QUOTA_SHOW)
    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.COMPUTE + "detail", project_id)
        qs = self.quotas.show(project_id)
        extra = {r: {"limit": v, "in_use": 0, "reserved": 0}
                 for r, v in _compute_extra(req).items()}
        wsgi.reply(resp, 200, {"quota_set": {**_detail(qs), **extra, "id": project_id}})


class ComputeQuotaDefaults:
    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), rules.COMPUTE + "defaults", project_id)
        wsgi.reply(resp, 200, {"quota_set": {**self.quotas.defaults, **_compute_extra(req),
                                             "id": project_id}})


class ComputeLimits:
    """``/v2.1/limits`` (``?tenant_id=``: another project's, for an admin)."""

    def __init__(self, quotas: Quotas) -> None:
        self.quotas = quotas

    @validated(query=schemas.COMPUTE_LIMITS)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        authorize(ctx, rules.COMPUTE_LIMITS)
        project_id = query_of(req).get("tenant_id") or ctx.project_id
        if project_id != ctx.project_id:
            authorize(ctx, rules.COMPUTE_LIMITS_OTHER, project_id)
        qs = self.quotas.show(project_id)
        lim, use = qs.limits, qs.usage
        absolute: dict[str, int] = {
            "maxTotalInstances": lim["instances"], "totalInstancesUsed": use["instances"],
            "maxTotalCores": lim["cores"], "totalCoresUsed": use["cores"],
            "maxTotalRAMSize": lim["ram"], "totalRAMUsed": use["ram"],
            "maxServerMeta": lim["metadata_items"], "maxTotalKeypairs": lim["key_pairs"],
            "maxServerGroups": lim["server_groups"],
            "maxServerGroupMembers": lim["server_group_members"],
            "totalServerGroupsUsed": 0,
        }
        version = wsgi.version(req)
        if not version.at_least("2.57"):
            absolute.update(maxPersonality=5, maxPersonalitySize=10240)
        if not version.at_least("2.36"):
            absolute.update(maxTotalFloatingIps=10, totalFloatingIpsUsed=0,
                            maxSecurityGroups=10, totalSecurityGroupsUsed=0,
                            maxSecurityGroupRules=20)
        wsgi.reply(resp, 200, {"limits": {"rate": [], "absolute": absolute}})


def add_compute_routes(app: wsgi.WsgiApp, quotas: Quotas) -> None:
    app.add_route("/v2.1/os-quota-sets/{project_id}", ComputeQuotaSet(quotas))
    app.add_route("/v2.1/os-quota-sets/{project_id}/detail", ComputeQuotaDetail(quotas))
    app.add_route("/v2.1/os-quota-sets/{project_id}/defaults", ComputeQuotaDefaults(quotas))
    app.add_route("/v2.1/limits", ComputeLimits(quotas))


_CQ = "/v2.1/os-quota-sets/{project_id}"
COMPUTE_OPERATIONS = (
    Operation("GET", _CQ, "Show a project's quotas", 200, query=schemas.COMPUTE_QUOTA_SHOW),
    Operation("PUT", _CQ, "Set a project's quotas (-1: unlimited; below its usage only "
              "with force)", 200, body=schemas.COMPUTE_QUOTA_UPDATE),
    Operation("DELETE", _CQ, "Reset a project's quotas to the defaults", 202),
    Operation("GET", _CQ + "/detail", "A project's quotas with their usage", 200,
              query=schemas.COMPUTE_QUOTA_SHOW),
    Operation("GET", _CQ + "/defaults", "The default quotas", 200),
    Operation("GET", "/v2.1/limits", "A project's absolute limits and usage (the "
              "caller's, or ?tenant_id= for an admin)", 200, query=schemas.COMPUTE_LIMITS),
    # what `openstack quota show/set PROJECT` looks the project up with
    Operation("GET", "/identity/v3/projects/{project_id}", "A project by id (Tether keeps "
              "none: a token's project is one, named by its id)", 200),
    Operation("GET", "/identity/v3/projects", "A project by ?name= (an admin)", 200,
              query=schemas.PROJECT_LIST),
)
