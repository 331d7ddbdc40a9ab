"""Block Storage API (Cinder v3-compatible), port 8776.

Handlers parse and validate the request, call the block-storage service and
render a view; they never touch a driver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from tether.api import errors, openapi, quotas, volume_types, wsgi
from tether.api import volume_views as views
from tether.api.auth import Authenticator
from tether.api.openapi import Operation
from tether.api.schemas import block_storage as schemas
from tether.api.validation import DEFAULT_MAX_BODY, body_of, query_of, validated
from tether.api.versions import VOLUME
from tether.api.wsgi import WsgiApp
from tether.connection import Connector
from tether.context import RequestContext
from tether.policies.block_storage import HOST_ATTRIBUTE
from tether.policy import allowed
from tether.volume.api import VolumeAPI
from tether.volume.legacy import LegacyActions

COLLECTIONS = ("volumes", "attachments", "types", *quotas.VOLUME_COLLECTIONS)


def _require(req: falcon.Request, minimum: str, what: str) -> None:
    if not wsgi.version(req).at_least(minimum):
        raise errors.not_found(f"{what} needs microversion {minimum} or later "
                               f"(OpenStack-API-Version: volume {minimum}).")


def _flag(value: Any) -> bool:
    """A schema-checked boolean: true, false or one of oslo's spellings."""
    return value if isinstance(value, bool) else str(value).lower() in (
        "1", "t", "true", "on", "y", "yes")


def _all_projects(req: falcon.Request) -> bool:
    """``all_tenants``: every project for an admin; for anyone else it is
    ignored (their own project), as in Cinder -- cinderclient's lookup by name
    sends ``all_tenants=1`` whoever the caller is."""
    q = query_of(req)
    return (bool(q.get("all_tenants") or q.get("all_projects"))
            and allowed(wsgi.caller(req), "tether:volume:all_projects"))


class _Base:
    def __init__(self, api: VolumeAPI) -> None:
        self.api = api

    def _detail(self, req: falcon.Request, vol: Any, ctx: RequestContext) -> dict[str, Any]:
        atts = self.api.live_attachments([vol.id])[vol.id]
        return views.volume_detail(vol, atts, wsgi.version(req), wsgi.base_url(req),
                                   allowed(ctx, HOST_ATTRIBUTE))


class Volumes(_Base):
    @validated(query=schemas.VOLUME_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        q = query_of(req)
        vols = self.api.list_volumes(ctx, _filters(req, ("name", "status", "project_id")),
                                     _all_projects(req), q.get("limit"), q.get("marker"))
        base = wsgi.base_url(req)
        wsgi.reply(resp, 200, {"volumes": [views.volume_summary(v, base) for v in vols]})

    @validated(body=schemas.VOLUME_CREATE)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        data = body_of(req)["volume"]
        volume_types.check(data.get("volume_type"))
        for unsupported in ("snapshot_id", "source_volid", "imageRef", "image_id",
                            "backup_id"):
            if data.get(unsupported):
                raise errors.bad_request(f"Creating a volume from {unsupported} is not "
                                         "supported by this service.")
        vol = self.api.create(ctx, int(data["size"]), data.get("name"),
                              data.get("description"), data.get("metadata") or {},
                              _flag(data.get("multiattach", False)))
        wsgi.reply(resp, 202, {"volume": self._detail(req, vol, ctx)})


class VolumesDetail(_Base):
    @validated(query=schemas.VOLUME_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ctx = wsgi.caller(req)
        q = query_of(req)
        vols = self.api.list_volumes(ctx, _filters(req, ("name", "status", "project_id")),
                                     _all_projects(req), q.get("limit"), q.get("marker"))
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

    @validated(body=schemas.VOLUME_UPDATE)
    def on_put(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        ctx = wsgi.caller(req)
        data = body_of(req)["volume"]
        changes: dict[str, Any] = {k: data[k] for k in ("name", "description") if k in data}
        if "metadata" in data:
            changes["metadata"] = data["metadata"] or {}
        vol = self.api.update(ctx, volume_id, changes)
        wsgi.reply(resp, 200, {"volume": self._detail(req, vol, ctx)})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        self.api.delete(wsgi.caller(req), volume_id)
        wsgi.reply(resp, 202)


def _filters(req: falcon.Request, keys: tuple[str, ...]) -> dict[str, str]:
    q = query_of(req)
    return {k: q[k] for k in keys if k in q}


def _connector(data: Any) -> Connector | None:
    return None if data is None else Connector.from_dict(data)


class Attachments(_Base):
    @validated(query=schemas.ATTACHMENT_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _require(req, "3.27", "The attachments API")
        rows = self.api.attachment_list(wsgi.caller(req), _filters(
            req, ("volume_id", "instance_id", "status")), _all_projects(req))
        wsgi.reply(resp, 200, {"attachments": [views.attachment_summary(a) for a in rows]})

    @validated(body=schemas.ATTACHMENT_CREATE)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        _require(req, "3.27", "The attachments API")
        ctx = wsgi.caller(req)
        data = body_of(req)["attachment"]
        result = self.api.attachment_create(ctx, data["volume_uuid"], data.get("instance_uuid"),
                                            _connector(data.get("connector")),
                                            data.get("mode", "rw"))
        wsgi.reply(resp, 200, {"attachment": views.attachment_detail(
            result.attachment, result.connection_info,
            allowed(ctx, "tether:volume:see_chap_secret"))})


class AttachmentsDetail(_Base):
    @validated(query=schemas.ATTACHMENT_LIST)
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

    @validated(body=schemas.ATTACHMENT_UPDATE)
    def on_put(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.27", "The attachments API")
        ctx = wsgi.caller(req)
        result = self.api.attachment_update(ctx, attachment_id, Connector.from_dict(
            body_of(req)["attachment"]["connector"]))
        wsgi.reply(resp, 200, {"attachment": views.attachment_detail(
            result.attachment, result.connection_info,
            allowed(ctx, "tether:volume:see_chap_secret"))})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.27", "The attachments API")
        remaining = self.api.attachment_delete(wsgi.caller(req), attachment_id)
        wsgi.reply(resp, 200, {"attachments": [views.attachment_summary(a) for a in remaining]})


class AttachmentAction(_Base):
    @validated(body=schemas.ATTACHMENT_ACTION)
    def on_post(self, req: falcon.Request, resp: falcon.Response, attachment_id: str) -> None:
        _require(req, "3.44", "Completing an attachment (os-complete)")
        self.api.attachment_complete(wsgi.caller(req), attachment_id)
        wsgi.reply(resp, 204)


ActionResult = dict[str, Any] | None
VolumeActionFn = Callable[[LegacyActions, RequestContext, str, dict[str, Any]], ActionResult]


def _initialize_connection(legacy: LegacyActions, ctx: RequestContext, vid: str,
                           args: dict[str, Any]) -> ActionResult:
    info = legacy.initialize_connection(ctx, vid, Connector.from_dict(args["connector"]))
    return {"connection_info": info.to_dict(
        with_secret=allowed(ctx, "tether:volume:see_chap_secret"))}


def _attach(legacy: LegacyActions, ctx: RequestContext, vid: str,
            args: dict[str, Any]) -> ActionResult:
    if args.get("instance_uuid") is None and args.get("host_name") is None:
        raise errors.bad_request("Invalid os-attach: instance_uuid or host_name is required.")
    legacy.attach(ctx, vid, args.get("instance_uuid"), args.get("mountpoint"),
                  args.get("host_name"), args.get("mode", "rw"))
    return None


def _no_args(method: Callable[[LegacyActions, RequestContext, str], None]) -> VolumeActionFn:
    def run(legacy: LegacyActions, ctx: RequestContext, vid: str,
            args: dict[str, Any]) -> ActionResult:
        method(legacy, ctx, vid)
        return None
    return run


def _by_attachment(method: Callable[[LegacyActions, RequestContext, str, str | None], None]
                   ) -> VolumeActionFn:
    def run(legacy: LegacyActions, ctx: RequestContext, vid: str,
            args: dict[str, Any]) -> ActionResult:
        method(legacy, ctx, vid, args.get("attachment_id"))
        return None
    return run


def _terminate_connection(legacy: LegacyActions, ctx: RequestContext, vid: str,
                          args: dict[str, Any]) -> ActionResult:
    legacy.terminate_connection(ctx, vid, Connector.from_dict(args["connector"]))
    return None


def _reset_status(legacy: LegacyActions, ctx: RequestContext, vid: str,
                  args: dict[str, Any]) -> ActionResult:
    legacy.reset_status(ctx, vid, args.get("status"), args.get("attach_status"))
    return None


VOLUME_ACTIONS: dict[str, VolumeActionFn] = {
    "os-reserve": _no_args(LegacyActions.reserve),
    "os-unreserve": _no_args(LegacyActions.unreserve),
    "os-begin_detaching": _no_args(LegacyActions.begin_detaching),
    "os-roll_detaching": _no_args(LegacyActions.roll_detaching),
    "os-initialize_connection": _initialize_connection,
    "os-terminate_connection": _terminate_connection,
    "os-attach": _attach,
    "os-detach": _by_attachment(LegacyActions.detach),
    "os-reset_status": _reset_status,
    "os-force_detach": _by_attachment(LegacyActions.force_detach),
}
"""The legacy volume actions: the only names POST .../action runs (the body's
schema admits exactly these, so an unknown name is a 400 before dispatch)."""


class VolumeAction:
    def __init__(self, legacy: LegacyActions) -> None:
        self.legacy = legacy

    @validated(body=schemas.VOLUME_ACTION)
    def on_post(self, req: falcon.Request, resp: falcon.Response, volume_id: str) -> None:
        (name, args), = body_of(req).items()
        result = VOLUME_ACTIONS[name](self.legacy, wsgi.caller(req), volume_id, args or {})
        if result is None:
            wsgi.reply(resp, 202)
        else:
            wsgi.reply(resp, 200, result)


_ACTIONS = tuple(VOLUME_ACTIONS)
OPERATIONS = (
    *openapi.discovery_operations(VOLUME, 300),
    Operation("GET", "/v3/volumes", "List volumes", 200, query=schemas.VOLUME_LIST),
    Operation("POST", "/v3/volumes", "Create a volume", 202, body=schemas.VOLUME_CREATE),
    Operation("GET", "/v3/volumes/detail", "List volumes with details", 200,
              query=schemas.VOLUME_LIST),
    Operation("GET", "/v3/volumes/{volume_id}", "Show a volume", 200),
    Operation("PUT", "/v3/volumes/{volume_id}", "Update a volume's name, description or "
              "metadata", 200, body=schemas.VOLUME_UPDATE),
    Operation("DELETE", "/v3/volumes/{volume_id}", "Delete a volume (available or error)",
              202, errors=(409,)),
    Operation("POST", "/v3/volumes/{volume_id}/action", "Legacy volume action (one of "
              + ", ".join(_ACTIONS) + "); os-initialize_connection answers 200 with "
              "connection_info, the others 202", 202, body=schemas.VOLUME_ACTION,
              errors=(409,)),
    Operation("GET", "/v3/types", "List volume types (one: __DEFAULT__)", 200),
    Operation("GET", "/v3/types/{type_id}", "Show a volume type, by id or name ('default' "
              "from 3.62)", 200),
    Operation("GET", "/v3/types/{type_id}/extra_specs", "A volume type's extra specs "
              "(none)", 200),
    Operation("GET", "/v3/attachments", "List attachments", 200, query=schemas.ATTACHMENT_LIST,
              since="3.27"),
    Operation("POST", "/v3/attachments", "Create an attachment (reserve the volume; with a "
              "connector, also export it)", 200, body=schemas.ATTACHMENT_CREATE, since="3.27",
              errors=(409,)),
    Operation("GET", "/v3/attachments/detail", "List attachments with details", 200,
              query=schemas.ATTACHMENT_LIST, since="3.27"),
    Operation("GET", "/v3/attachments/{attachment_id}", "Show an attachment", 200,
              since="3.27"),
    Operation("PUT", "/v3/attachments/{attachment_id}", "Update an attachment with the "
              "host's connector: export the volume, answer connection_info", 200,
              body=schemas.ATTACHMENT_UPDATE, since="3.27", errors=(409,)),
    Operation("DELETE", "/v3/attachments/{attachment_id}", "Delete an attachment; answers "
              "the volume's remaining attachments", 200, since="3.27", errors=(409,)),
    Operation("POST", "/v3/attachments/{attachment_id}/action", "os-complete: the "
              "attachment is in use", 204, body=schemas.ATTACHMENT_ACTION, since="3.44"),
    *quotas.VOLUME_OPERATIONS,
)
DESCRIPTION = ("Cinder v3-compatible. Every /v3/... path is also served as "
               "/v3/{project_id}/...")


def create_app(api: VolumeAPI, auth: Authenticator,
               max_body: int = DEFAULT_MAX_BODY) -> WsgiApp:
    app = wsgi.create_app(VOLUME, auth, COLLECTIONS, server_fault="computeFault",
                          root_status=300, public=(openapi.PATH,), max_body=max_body)
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
    quotas.add_volume_routes(app, api.quotas)
    return app
