"""Compute API (Nova v2.1-compatible), port 8774: flavors, servers, volume
attachments and instance actions.  Handlers validate the request for its
microversion, call the compute service and render a view."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from typing import Any

import falcon

from tether.api import compute_views as views
from tether.api import errors, identity, openapi, quotas, wsgi
from tether.api.auth import Authenticator
from tether.api.name_filter import NameMatcher, compile_name_filter
from tether.api.openapi import Operation
from tether.api.schemas import compute as schemas
from tether.api.validation import DEFAULT_MAX_BODY, body_of, query_of, validated
from tether.api.versions import COMPUTE
from tether.api.wsgi import WsgiApp
from tether.compute import flavors
from tether.compute.api import ComputeAPI, RootVolume
from tether.compute.images import valid_image_ref
from tether.context import RequestContext
from tether.exceptions import FlavorNotFound, ServerNotFound
from tether.policy import allowed, authorize

COLLECTIONS = ("servers", "flavors", "os-volume_attachments", *quotas.COMPUTE_COLLECTIONS)


def _uuid(value: Any, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise errors.bad_request(f"Invalid input for field/attribute {what}. Value: {value}. "
                                 f"'{value}' is not a 'uuid'") from None


def _server_id(server_id: str) -> str:
    try:
        return str(uuid.UUID(server_id))
    except ValueError:
        raise ServerNotFound(server_id) from None


class Flavors:
    def __init__(self, detail: bool) -> None:
        self.detail = detail

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        authorize(wsgi.caller(req), "tether:compute:flavors")
        render = views.flavor_detail if self.detail else views.flavor_summary
        base, version = wsgi.base_url(req), wsgi.version(req)
        wsgi.reply(resp, 200, {"flavors": [render(f, base, version)
                                           for f in flavors.FLAVORS.values()]})


class Flavor:
    def on_get(self, req: falcon.Request, resp: falcon.Response, flavor_id: str) -> None:
        authorize(wsgi.caller(req), "tether:compute:flavors")
        flavor = flavors.FLAVORS.get(flavor_id)
        if flavor is None:
            raise FlavorNotFound(flavor_id)
        wsgi.reply(resp, 200, {"flavor": views.flavor_detail(
            flavor, wsgi.base_url(req), wsgi.version(req))})


class FlavorExtraSpecs:
    """``GET /flavors/{id}/os-extra_specs``: Tether's flavors have none (the
    ``openstack flavor show`` and ``flavor list --long`` read them)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, flavor_id: str) -> None:
        authorize(wsgi.caller(req), "os_compute_api:os-flavor-extra-specs:index")
        if flavor_id not in flavors.FLAVORS:
            raise FlavorNotFound(flavor_id)
        wsgi.reply(resp, 200, {"extra_specs": {}})


class FlavorExtraSpec:
    def on_get(self, req: falcon.Request, resp: falcon.Response, flavor_id: str,
               key: str) -> None:
        authorize(wsgi.caller(req), "os_compute_api:os-flavor-extra-specs:show")
        if flavor_id not in flavors.FLAVORS:
            raise FlavorNotFound(flavor_id)
        raise errors.not_found(f"Flavor {flavor_id} has no extra specs with key {key}.")


class _Base:
    def __init__(self, api: ComputeAPI) -> None:
        self.api = api

    def _detail(self, req: falcon.Request, insts: list[Any]) -> list[dict[str, Any]]:
        ctx = wsgi.caller(req)
        bdms = self.api.volume_bdms([i.uuid for i in insts])
        base, version = wsgi.base_url(req), wsgi.version(req)
        show_host = allowed(ctx, "os_compute_api:os-extended-server-attributes")
        return [views.server_detail(i, bdms[i.uuid], flavors.FLAVORS.get(i.flavor_id), base,
                                    version, show_host) for i in insts]


class Servers(_Base):
    @validated(query=schemas.SERVER_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        insts = self.api.list_servers(wsgi.caller(req), _name_filter(req),
                                      _all_projects(req))
        base = wsgi.base_url(req)
        wsgi.reply(resp, 200, {"servers": [views.server_summary(i, base) for i in insts]})

    @validated(body=schemas.SERVER_CREATE)
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        data = body_of(req)["server"]
        name, flavor = data["name"], data["flavorRef"]
        image = data.get("imageRef") or None
        if image is not None and not valid_image_ref(image):
            raise errors.bad_request(f"Invalid imageRef {image!r}: name a file in the compute "
                                     "host's images directory (no path), or leave it out for "
                                     "a guest without an OS.")
        root = _root_volume(data.get("block_device_mapping_v2"))
        if root is not None and image is not None:
            raise errors.bad_request("Give either imageRef or a boot volume "
                                     "(block_device_mapping_v2 boot_index 0), not both.")
        inst = self.api.create_server(wsgi.caller(req), name.strip(), str(flavor), image, root)
        body = views.server_summary(inst, wsgi.base_url(req))
        body.update({"OS-DCF:diskConfig": "MANUAL", "security_groups": [{"name": "default"}],
                     "adminPass": secrets.token_urlsafe(9)})
        wsgi.reply(resp, 202, {"server": body})


def _root_volume(bdms: Any) -> RootVolume | None:
    """The one mapping Tether boots from: a volume at boot index 0."""
    if not bdms:
        return None
    if len(bdms) != 1:
        raise errors.bad_request("block_device_mapping_v2: give exactly one mapping, the boot "
                                 "volume; attach others with os-volume_attachments.")
    bdm = bdms[0]
    if (str(bdm.get("boot_index")) != "0" or bdm.get("source_type") != "volume"
            or bdm.get("destination_type", "volume") != "volume"):
        raise errors.bad_request("block_device_mapping_v2: only a volume at boot_index 0 "
                                 "(source_type and destination_type 'volume') is supported.")
    return RootVolume(_uuid(bdm.get("uuid"), "block_device_mapping_v2.uuid"),
                      bdm.get("delete_on_termination", False))


def _name_filter(req: falcon.Request) -> NameMatcher | None:
    """``?name=``: a regular expression, as in Nova (400 for an invalid one),
    matched in linear time (``name_filter``)."""
    name = query_of(req).get("name")
    return None if name is None else compile_name_filter(name)


def _all_projects(req: falcon.Request) -> bool:
    return bool(query_of(req).get("all_tenants"))


class ServersDetail(_Base):
    @validated(query=schemas.SERVER_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        insts = self.api.list_servers(wsgi.caller(req), _name_filter(req),
                                      _all_projects(req), rule="os_compute_api:servers:detail")
        wsgi.reply(resp, 200, {"servers": self._detail(req, insts)})


class Server(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        inst = self.api.get_server(wsgi.caller(req), _server_id(server_id))
        wsgi.reply(resp, 200, {"server": self._detail(req, [inst])[0]})

    def on_delete(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        self.api.delete_server(wsgi.caller(req), _server_id(server_id))
        wsgi.reply(resp, 204)


ServerActionFn = Callable[[ComputeAPI, RequestContext, str], None]
SERVER_ACTIONS: dict[str, ServerActionFn] = {
    "os-stop": lambda api, ctx, sid: api.power_action(ctx, sid, "stop"),
    "os-start": lambda api, ctx, sid: api.power_action(ctx, sid, "start"),
    "lock": lambda api, ctx, sid: api.lock(ctx, sid, True),
    "unlock": lambda api, ctx, sid: api.lock(ctx, sid, False),
    "shelve": lambda api, ctx, sid: api.shelve_action(ctx, sid, "shelve"),
    "shelveOffload": lambda api, ctx, sid: api.shelve_action(ctx, sid, "shelve_offload"),
    "unshelve": lambda api, ctx, sid: api.shelve_action(ctx, sid, "unshelve"),
}
"""The server actions: the only names POST .../action runs (the body's schema
admits exactly these, so an unknown name is a 400 before dispatch)."""


class ServerAction(_Base):
    @validated(body=schemas.SERVER_ACTION)
    def on_post(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        ctx, sid = wsgi.caller(req), _server_id(server_id)
        (name,) = body_of(req)
        SERVER_ACTIONS[name](self.api, ctx, sid)
        wsgi.reply(resp, 202)


class VolumeAttachments(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        bdms = self.api.attachments.index(wsgi.caller(req), _server_id(server_id))
        version = wsgi.version(req)
        wsgi.reply(resp, 200, {"volumeAttachments": [
            views.volume_attachment(b, version) for b in bdms]})

    @validated(body=schemas.VOLUME_ATTACH)
    def on_post(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        sid, version = _server_id(server_id), wsgi.version(req)
        data = body_of(req)["volumeAttachment"]
        volume_id = _uuid(data["volumeId"], "volumeId")
        bdm = self.api.attachments.attach(wsgi.caller(req), sid, volume_id,
                                          data.get("device") or None, data.get("tag"),
                                          data.get("delete_on_termination", False),
                                          allow_multiattach=version.at_least("2.60"))
        wsgi.reply(resp, 200, {"volumeAttachment": views.volume_attachment(
            bdm, version, created=True)})


class VolumeAttachment(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str,
               volume_id: str) -> None:
        bdm = self.api.attachments.get(wsgi.caller(req), _server_id(server_id),
                                             volume_id)
        wsgi.reply(resp, 200, {"volumeAttachment": views.volume_attachment(
            bdm, wsgi.version(req))})

    @validated(body=schemas.VOLUME_ATTACHMENT_UPDATE)
    def on_put(self, req: falcon.Request, resp: falcon.Response, server_id: str,
               volume_id: str) -> None:
        """From 2.85, the same volumeId: update delete_on_termination (the other
        members may be given but not changed).  A different volumeId, or any
        PUT before 2.85, is Nova's volume swap, which Tether does not do."""
        sid, version = _server_id(server_id), wsgi.version(req)
        data = body_of(req)["volumeAttachment"]
        new_volume = _uuid(data["volumeId"], "volumeId")
        if not version.at_least("2.85") or new_volume != volume_id:
            raise errors.bad_request(
                "Swapping a server's volume for another is not supported: detach it and "
                "attach the other.  To change delete_on_termination, PUT the same volumeId "
                "with microversion 2.85 or later.")
        bdm = self.api.attachments.get(wsgi.caller(req), sid, volume_id)
        current = {"device": bdm.device_name, "tag": bdm.tag, "serverId": bdm.instance_uuid,
                   "id": bdm.volume_id}
        changed = sorted(k for k, v in current.items() if k in data and data[k] != v)
        if changed:
            raise errors.bad_request(f"Only delete_on_termination of a volume attachment can "
                                     f"be updated, not {', '.join(changed)}.")
        if "delete_on_termination" in data:
            self.api.attachments.set_delete_on_termination(
                wsgi.caller(req), sid, volume_id, data["delete_on_termination"])
        wsgi.reply(resp, 202)

    def on_delete(self, req: falcon.Request, resp: falcon.Response, server_id: str,
                  volume_id: str) -> None:
        self.api.attachments.detach(wsgi.caller(req), _server_id(server_id), volume_id,
                               allow_shelved=wsgi.version(req).at_least("2.20"))
        wsgi.reply(resp, 202)


class DeviceMetadata(_Base):
    """``GET /servers/{id}/device-metadata``: the tagged devices of a server, in
    the shape of Nova's metadata service ``devices`` list (what a guest would
    read there); a device leaves with its detach."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        bdms = self.api.attachments.index(wsgi.caller(req), _server_id(server_id))
        wsgi.reply(resp, 200, {"devices": [
            {"type": "disk", "bus": b.disk_bus or "scsi", "serial": b.volume_id,
             "path": b.device_name, "tags": [b.tag]}
            for b in bdms if b.tag]})


class InstanceActions(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str) -> None:
        version = wsgi.version(req)
        rows = self.api.list_actions(wsgi.caller(req), _server_id(server_id),
                                     read_deleted=version.at_least("2.21"))
        wsgi.reply(resp, 200, {"instanceActions": [views.instance_action(a, version)
                                                   for a in rows]})


class InstanceAction(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, server_id: str,
               request_id: str) -> None:
        ctx = wsgi.caller(req)
        version = wsgi.version(req)
        view = self.api.get_action(ctx, _server_id(server_id), request_id,
                                   read_deleted=version.at_least("2.21"))
        show_tb = allowed(ctx, "os_compute_api:os-instance-actions:events")
        body = views.instance_action(view.action, version)
        body["events"] = [views.action_event(e, version, show_tb) for e in view.events]
        wsgi.reply(resp, 200, {"instanceAction": body})


_S = "/v2.1/servers/{server_id}"
OPERATIONS = (
    *openapi.discovery_operations(COMPUTE, 200),
    Operation("GET", identity.PATH, "Identity versions (static, for clients that "
              "discover one; Tether has no Keystone)", 300, public=True),
    Operation("GET", identity.V3_PATH, "Identity v3 version document (static)", 200,
              public=True),
    Operation("GET", "/v2.1/flavors", "List flavors", 200),
    Operation("GET", "/v2.1/flavors/detail", "List flavors with details", 200),
    Operation("GET", "/v2.1/flavors/{flavor_id}", "Show a flavor", 200),
    Operation("GET", "/v2.1/flavors/{flavor_id}/os-extra_specs",
              "A flavor's extra specs (always none)", 200),
    Operation("GET", "/v2.1/flavors/{flavor_id}/os-extra_specs/{key}",
              "One extra spec of a flavor (never found)", 200),
    Operation("GET", "/v2.1/servers", "List servers", 200, query=schemas.SERVER_LIST),
    Operation("POST", "/v2.1/servers", "Create a server (no image: a guest without an OS; "
              "imageRef: a local image file; or a boot volume)", 202,
              body=schemas.SERVER_CREATE),
    Operation("GET", "/v2.1/servers/detail", "List servers with details", 200,
              query=schemas.SERVER_LIST),
    Operation("GET", _S, "Show a server", 200),
    Operation("DELETE", _S, "Delete a server (detaches its volumes)", 204, errors=(409,)),
    Operation("POST", _S + "/action", "Server action: os-stop, os-start, lock, unlock, "
              "shelve, shelveOffload, unshelve", 202, body=schemas.SERVER_ACTION,
              errors=(409,)),
    Operation("GET", _S + "/os-volume_attachments", "List a server's volume attachments",
              200),
    Operation("POST", _S + "/os-volume_attachments", "Attach a volume", 200,
              body=schemas.VOLUME_ATTACH, errors=(409,)),
    Operation("GET", _S + "/os-volume_attachments/{volume_id}", "Show a volume attachment",
              200),
    Operation("PUT", _S + "/os-volume_attachments/{volume_id}", "Update "
              "delete_on_termination (the same volumeId; swapping volumes is not "
              "supported)", 202, body=schemas.VOLUME_ATTACHMENT_UPDATE, since="2.85"),
    Operation("DELETE", _S + "/os-volume_attachments/{volume_id}", "Detach a volume", 202,
              errors=(409,)),
    Operation("GET", _S + "/device-metadata", "Tagged devices of a server", 200),
    Operation("GET", _S + "/os-instance-actions", "List a server's actions", 200),
    Operation("GET", _S + "/os-instance-actions/{request_id}",
              "Show an action with its steps", 200),
    *quotas.COMPUTE_OPERATIONS,
)
DESCRIPTION = ("Nova v2.1-compatible. Every /v2.1/... path is also served as "
               "/v2.1/{project_id}/...")


def create_app(api: ComputeAPI, auth: Authenticator,
               max_body: int = DEFAULT_MAX_BODY) -> WsgiApp:
    app = wsgi.create_app(COMPUTE, auth, COLLECTIONS, server_fault="computeFault",
                          root_status=200, public=(openapi.PATH, *identity.PUBLIC_PATHS),
                          max_body=max_body)
    app.add_route(openapi.PATH, openapi.OpenApiDocument(
        COMPUTE, "Tether Compute API", DESCRIPTION, OPERATIONS))
    identity.add_routes(app)
    app.add_route("/v2.1/flavors", Flavors(detail=False))
    app.add_route("/v2.1/flavors/detail", Flavors(detail=True))
    app.add_route("/v2.1/flavors/{flavor_id}", Flavor())
    app.add_route("/v2.1/flavors/{flavor_id}/os-extra_specs", FlavorExtraSpecs())
    app.add_route("/v2.1/flavors/{flavor_id}/os-extra_specs/{key}", FlavorExtraSpec())
    app.add_route("/v2.1/servers", Servers(api))
    app.add_route("/v2.1/servers/detail", ServersDetail(api))
    app.add_route("/v2.1/servers/{server_id}", Server(api))
    app.add_route("/v2.1/servers/{server_id}/action", ServerAction(api))
    app.add_route("/v2.1/servers/{server_id}/os-volume_attachments", VolumeAttachments(api))
    app.add_route("/v2.1/servers/{server_id}/os-volume_attachments/{volume_id}",
                  VolumeAttachment(api))
    app.add_route("/v2.1/servers/{server_id}/device-metadata", DeviceMetadata(api))
    app.add_route("/v2.1/servers/{server_id}/os-instance-actions", InstanceActions(api))
    app.add_route("/v2.1/servers/{server_id}/os-instance-actions/{request_id}",
                  InstanceAction(api))
    quotas.add_compute_routes(app, api.quotas)
    return app
