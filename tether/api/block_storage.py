"""Block Storage API (Cinder v3-compatible), port 8776.

Handlers parse and validate the request, call the block-storage service and
render a view; they never touch a driver.
"""

from __future__ import annotations

from typing import Any

import falcon

from tether.api import errors, openapi, volume_types, wsgi
from tether.api import volume_views as views
from tether.api.auth import Authenticator
from tether.api.openapi import Operation
from tether.api.versions import VOLUME
from tether.api.wsgi import WsgiApp
from tether.connection import Connector
from tether.context import RequestContext
from tether.policies.block_storage import HOST_ATTRIBUTE
from tether.policy import allowed
from tether.volume.api import VolumeAPI
from tether.volume.legacy import LegacyActions

COLLECTIONS = ("volumes", "attachments", "types")


def _require(req: falcon.Request, minimum: str, what: str) -> None:
    if not wsgi.version(req).at_least(minimum):
        raise errors.not_found(f"{what} needs microversion {minimum} or later "
                               f"(OpenStack-API-Version: volume {minimum}).")


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise errors.bad_request(f"Invalid value {value!r} for {name}: expected a boolean.")


def _str_or_none(data: dict[str, Any], key: str, limit: int = 255) -> str | None:
    value = data.get(key)
    if value is not None and (not isinstance(value, str) or len(value) > limit):
        raise errors.bad_request(f"Invalid {key}: expected a string of at most {limit} "
                                 "characters.")
    return value


def _metadata(data: dict[str, Any]) -> dict[str, str]:
    meta = data.get("metadata") or {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 255 and len(v) <= 255
            for k, v in meta.items()):
        raise errors.bad_request("Invalid metadata: expected an object of string keys "
                                 "(1-255 chars) to string values (up to 255 chars).")
    return meta


def _all_projects(req: falcon.Request) -> bool:
    """``all_tenants``: every project for an admin; for anyone else it is
    ignored (their own project), as in Cinder -- cinderclient's lookup by name
    sends ``all_tenants=1`` whoever the caller is."""
    value = req.get_param("all_tenants") or req.get_param("all_projects")
    return (value is not None and _flag(value, "all_tenants")
            and allowed(wsgi.caller(req), "tether:volume:all_projects"))


def _limit(req: falcon.Request) -> int | None:
    raw = req.get_param("limit")
    if raw is None:
        return None
    if not raw.isdigit():
        raise errors.bad_request(f"Invalid limit {raw!r}: expected a non-negative integer.")
    return int(raw)


class _Base:
    def __init__(self, api: VolumeAPI) -> None:
        self.api = api

    def _detail(self, req: falcon.Request, vol: Any, ctx: RequestContext) -> dict[str, Any]:
        atts = self.api.live_attachments([vol.id])[vol.id]
        return views.volume_detail(vol, atts, wsgi.version(req), wsgi.base_url(req),
                                   allowed(ctx, HOST_ATTRIBUTE))


class Volumes(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        vols = self.api.list_volumes(ctx, _filters(req, ("name", "status", "project_id")),
                             _all_projects(req), _limit(req), req.get_param("marker"))
        base = wsgi.base_url(req)
        wsgi.reply(resp, 200, {"volumes": [views.volume_summary(v, base) for v in vols]})

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        data = wsgi.body(req, "volume")
        if not isinstance(data, dict):
            raise errors.bad_request("Invalid volume: expected an object.")
        size = data.get("size")
        if isinstance(size, str) and size.isdigit():
            size = int(size)
        if not isinstance(size, int) or isinstance(size, bool):
            raise errors.bad_request("Invalid input received: 'size' is required and must be "
                                     "an integer number of GiB.")
        volume_types.check(data.get("volume_type"))
        for unsupported in ("snapshot_id", "source_volid", "imageRef", "backup_id"):
            if data.get(unsupported):
                raise errors.bad_request(f"Creating a volume from {unsupported} is not "
                                         "supported by this service.")
        vol = self.api.create(ctx, size, _str_or_none(data, "name"),
                              _str_or_none(data, "description", 65535), _metadata(data),
                              _flag(data.get("multiattach", False), "multiattach"))
        wsgi.reply(resp, 202, {"volume": self._detail(req, vol, ctx)})


class VolumesDetail(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        vols = self.api.list_volumes(ctx, _filters(req, ("name", "status", "project_id")),
                             _all_projects(req), _limit(req), req.get_param("marker"))
        atts = self.api.live_attachments([v.id for v in vols])
        base, version = wsgi.base_url(req), wsgi.version(req)
        show_host = allowed(ctx, HOST_ATTRIBUTE)
        wsgi.reply(resp, 200, {"volumes": [
            views.volume_detail(v, atts[v.id], version, base, show_host) for v in vols]})


class Volume(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        ctx = wsgi.caller(req)
        vol, atts = self.api.get_with_attachments(ctx, volume_id)
        wsgi.reply(resp, 200, {"volume": views.volume_detail(
            vol, atts, wsgi.version(req), wsgi.base_url(req), allowed(ctx, HOST_ATTRIBUTE))})

    def on_put(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        ctx = wsgi.caller(req)
        data = wsgi.body(req, "volume")
        if not isinstance(data, dict) or not data:
            raise errors.bad_request("Invalid volume update: expected name, description or "
                                     "metadata.")
        changes: dict[str, Any] = {}
        for key in ("name", "description"):
            if key in data:
                changes[key] = _str_or_none(data, key, 255 if key == "name" else 65535)
        if "metadata" in data:
            changes["metadata"] = _metadata(data)
        vol = self.api.update(ctx, volume_id, changes)
        wsgi.reply(resp, 200, {"volume": self._detail(req, vol, ctx)})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        self.api.delete(wsgi.caller(req), volume_id)
        wsgi.reply(resp, 202)


def _filters(req: falcon.Request, keys: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k in keys if (v := req.get_param(k)) is not None}


def _connector(data: Any) -> Connector | None:
    return None if data is None else Connector.from_dict(data)


class Attachments(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _require(req, "3.27", "The attachments API")
        rows = self.api.attachment_list(wsgi.caller(req), _filters(
            req, ("volume_id", "instance_id", "status")), _all_projects(req))
        wsgi.reply(resp, 200, {"attachments": [views.attachment_summary(a) for a in rows]})

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _require(req, "3.27", "The attachments API")
        ctx = wsgi.caller(req)
        data = wsgi.body(req, "attachment")
        if not isinstance(data, dict):
            raise errors.bad_request("Invalid attachment: expected an object.")
        volume_id = data.get("volume_uuid") or data.get("volume_id")
        if not isinstance(volume_id, str):
            raise errors.bad_request("Invalid attachment: 'volume_uuid' is required.")
        instance = data.get("instance_uuid")
        if instance is not None and not isinstance(instance, str):
            raise errors.bad_request("Invalid attachment: 'instance_uuid' must be a string.")
        mode = data.get("mode", "rw")
        if "mode" in data and not wsgi.version(req).at_least("3.54"):
            raise errors.bad_request("'mode' needs microversion 3.54 or later.")
        result = self.api.attachment_create(ctx, volume_id, instance,
                                            _connector(data.get("connector")), mode)
        wsgi.reply(resp, 200, {"attachment": views.attachment_detail(
            result.attachment, result.connection_info,
            allowed(ctx, "tether:volume:see_chap_secret"))})


class AttachmentsDetail(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _require(req, "3.27", "The attachments API")
        ctx = wsgi.caller(req)
        rows = self.api.attachment_list(ctx, _filters(
            req, ("volume_id", "instance_id", "status")), _all_projects(req))
        wsgi.reply(resp, 200, {"attachments": [
            views.attachment_detail(a, None, False) for a in rows]})


class Attachment(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.27", "The attachments API")
        ctx = wsgi.caller(req)
        att, vol = self.api.attachment_get(ctx, attachment_id)
        info = self.api.connection_info_for(ctx, att, vol)
        wsgi.reply(resp, 200, {"attachment": views.attachment_detail(
            att, info, allowed(ctx, "tether:volume:see_chap_secret"))})

    def on_put(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.27", "The attachments API")
        ctx = wsgi.caller(req)
        data = wsgi.body(req, "attachment")
        if not isinstance(data, dict) or data.get("connector") is None:
            raise errors.bad_request("Invalid attachment update: 'connector' is required.")
        result = self.api.attachment_update(ctx, attachment_id,
                                            Connector.from_dict(data["connector"]))
        wsgi.reply(resp, 200, {"attachment": views.attachment_detail(
            result.attachment, result.connection_info,
            allowed(ctx, "tether:volume:see_chap_secret"))})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.27", "The attachments API")
        remaining = self.api.attachment_delete(wsgi.caller(req), attachment_id)
        wsgi.reply(resp, 200, {"attachments": [views.attachment_summary(a) for a in remaining]})


class AttachmentAction(_Base):
    def on_post(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.44", "Completing an attachment (os-complete)")
        data = wsgi.body(req)
        if not isinstance(data, dict) or "os-complete" not in data:
            raise errors.bad_request("Invalid action: expected {\"os-complete\": null}.")
        self.api.attachment_complete(wsgi.caller(req), attachment_id)
        wsgi.reply(resp, 204)


class VolumeAction:
    def __init__(self, legacy: LegacyActions) -> None:
        self.legacy = legacy

    def on_post(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        ctx = wsgi.caller(req)
        data = wsgi.body(req)
        if not isinstance(data, dict) or len(data) != 1:
            raise errors.bad_request("Invalid action: expected one {\"os-<action>\": {...}}.")
        (name, args), = data.items()
        args = args if isinstance(args, dict) else {}
        handler = getattr(self, "_" + name.replace("-", "_"), None)
        if handler is None:
            raise errors.bad_request(f"There is no such action: {name}.")
        result = handler(ctx, volume_id, args)
        if result is None:
            wsgi.reply(resp, 202)
        else:
            wsgi.reply(resp, 200, result)

    def _os_reserve(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.reserve(ctx, vid)

    def _os_unreserve(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.unreserve(ctx, vid)

    def _os_begin_detaching(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.begin_detaching(ctx, vid)

    def _os_roll_detaching(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.roll_detaching(ctx, vid)

    def _os_initialize_connection(self, ctx: RequestContext, vid: str,
                                  args: dict[str, Any]) -> dict[str, Any]:
        info = self.legacy.initialize_connection(ctx, vid, Connector.from_dict(
            args.get("connector")))
        return {"connection_info": info.to_dict(with_secret=allowed(
            ctx, "tether:volume:see_chap_secret"))}

    def _os_terminate_connection(self, ctx: RequestContext, vid: str,
                                 args: dict[str, Any]) -> None:
        self.legacy.terminate_connection(ctx, vid, Connector.from_dict(args.get("connector")))

    def _os_attach(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        instance, host = args.get("instance_uuid"), args.get("host_name")
        if instance is None and host is None:
            raise errors.bad_request("Invalid os-attach: instance_uuid or host_name is "
                                     "required.")
        mode = args.get("mode", "rw")
        if mode not in ("rw", "ro"):
            raise errors.bad_request(f"Invalid attach mode {mode!r}: expected rw or ro.")
        self.legacy.attach(ctx, vid, _str_or_none(args, "instance_uuid"),
                           _str_or_none(args, "mountpoint"), _str_or_none(args, "host_name"),
                           mode)

    def _os_detach(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.detach(ctx, vid, _str_or_none(args, "attachment_id"))

    def _os_reset_status(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.reset_status(ctx, vid, _str_or_none(args, "status"),
                                 _str_or_none(args, "attach_status"))

    def _os_force_detach(self, ctx: RequestContext, vid: str, args: dict[str, Any]) -> None:
        self.legacy.force_detach(ctx, vid, _str_or_none(args, "attachment_id"))


_LIST = ("name", "status", "project_id", "all_tenants", "all_projects", "limit", "marker")
_ATT_LIST = ("volume_id", "instance_id", "status", "all_tenants", "all_projects")
_ACTIONS = ("os-reserve", "os-unreserve", "os-begin_detaching", "os-roll_detaching",
            "os-initialize_connection", "os-terminate_connection", "os-attach", "os-detach",
            "os-reset_status", "os-force_detach")
OPERATIONS = (
    *openapi.discovery_operations(VOLUME, 300),
    Operation("GET", "/v3/volumes", "List volumes", 200, query=_LIST),
    Operation("POST", "/v3/volumes", "Create a volume", 202, body=("volume",)),
    Operation("GET", "/v3/volumes/detail", "List volumes with details", 200, query=_LIST),
    Operation("GET", "/v3/volumes/{volume_id}", "Show a volume", 200),
    Operation("PUT", "/v3/volumes/{volume_id}", "Update a volume's name, description or "
              "metadata", 200, body=("volume",)),
    Operation("DELETE", "/v3/volumes/{volume_id}", "Delete a volume (available or error)",
              202, errors=(409,)),
    Operation("POST", "/v3/volumes/{volume_id}/action", "Legacy volume action (one of "
              + ", ".join(_ACTIONS) + "); os-initialize_connection answers 200 with "
              "connection_info, the others 202", 202, body=_ACTIONS, errors=(409,)),
    Operation("GET", "/v3/types", "List volume types (one: __DEFAULT__)", 200),
    Operation("GET", "/v3/types/{type_id}", "Show a volume type, by id or name ('default' "
              "from 3.62)", 200),
    Operation("GET", "/v3/types/{type_id}/extra_specs", "A volume type's extra specs "
              "(none)", 200),
    Operation("GET", "/v3/attachments", "List attachments", 200, query=_ATT_LIST,
              since="3.27"),
    Operation("POST", "/v3/attachments", "Create an attachment (reserve the volume; with a "
              "connector, also export it)", 200, body=("attachment",), since="3.27",
              errors=(409,)),
    Operation("GET", "/v3/attachments/detail", "List attachments with details", 200,
              query=_ATT_LIST, since="3.27"),
    Operation("GET", "/v3/attachments/{attachment_id}", "Show an attachment", 200,
              since="3.27"),
    Operation("PUT", "/v3/attachments/{attachment_id}", "Update an attachment with the "
              "host's connector: export the volume, answer connection_info", 200,
              body=("attachment",), since="3.27", errors=(409,)),
    Operation("DELETE", "/v3/attachments/{attachment_id}", "Delete an attachment; answers "
              "the volume's remaining attachments", 200, since="3.27", errors=(409,)),
    Operation("POST", "/v3/attachments/{attachment_id}/action", "os-complete: the "
              "attachment is in use", 204, body=("os-complete",), since="3.44"),
)
DESCRIPTION = ("Cinder v3-compatible. Every /v3/... path is also served as "
               "/v3/{project_id}/...")


def create_app(api: VolumeAPI, auth: Authenticator) -> WsgiApp:
    app = wsgi.create_app(VOLUME, auth, COLLECTIONS, server_fault="computeFault",
                          root_status=300, public=(openapi.PATH,))
    app.add_route(openapi.PATH, openapi.OpenApiDocument(
        VOLUME, "Tether Block Storage API", DESCRIPTION, OPERATIONS))
    legacy = LegacyActions(api)
    app.add_route("/v3/volumes", Volumes(api))
    app.add_route("/v3/volumes/detail", VolumesDetail(api))
    app.add_route("/v3/volumes/{volume_id}", Volume(api))
    app.add_route("/v3/volumes/{volume_id}/action", VolumeAction(legacy))
    app.add_route("/v3/types", volume_types.VolumeTypes())
    app.add_route("/v3/types/{type_id}", volume_types.VolumeType())
    app.add_route("/v3/types/{type_id}/extra_specs", volume_types.VolumeTypeExtraSpecs())
    app.add_route("/v3/attachments", Attachments(api))
    app.add_route("/v3/attachments/detail", AttachmentsDetail(api))
    app.add_route("/v3/attachments/{attachment_id}", Attachment(api))
    app.add_route("/v3/attachments/{attachment_id}/action", AttachmentAction(api))
    return app
