"""The Identity v3 API of the local identity (``[api] auth_strategy =
local``, port ``[api] identity_port``): the calls the OpenStack clients make
to get and check a token, shaped as Keystone answers them.

* ``GET /``, ``GET /v3``: version discovery.
* ``POST /v3/auth/tokens``: password (user by name and domain, or id) or
  application credential (id, or name and user) with a project scope; the
  token comes in ``X-Subject-Token``, the body has the user, project, roles
  and the service catalog (compute, volumev3, image, identity; public and
  internal).
* ``GET`` / ``HEAD`` / ``DELETE /v3/auth/tokens``: validate or revoke the
  token in ``X-Subject-Token``, for an admin, a service or its own holder.
* ``GET /v3/auth/catalog``, ``GET /v3/auth/projects``.

Errors are Keystone's ``{"error": {"code", "title", "message"}}``.  (Not to
be confused with :mod:`tether.api.identity`, a static version document on
the compute port for clients without a real identity.)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

import falcon
from oslo_config import cfg

from tether import config
from tether.api import validation
from tether.api.errors import ApiError
from tether.context import new_request_id
from tether.identity.local import AuthFailed, Issued, LocalIdentity
from tether.identity.store import IdentityNotFound
from tether.identity.tokens import InvalidToken, TokenData

LOG = logging.getLogger(__name__)

DOMAIN = {"id": "default", "name": "Default"}
REGION = "RegionOne"
_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Request Entity Too Large",
           415: "Unsupported Media Type", 500: "Internal Server Error"}
_AUTH_NEEDED = "The request you have made requires authentication."


@dataclass(frozen=True)
class Service:
    type: str
    name: str
    url: str


def catalog_services(conf: cfg.ConfigOpts) -> tuple[Service, ...]:
    host, api = config.public_host(conf), conf.api
    return (Service("compute", "nova", f"http://{host}:{api.compute_port}/v2.1"),
            Service("volumev3", "cinderv3", f"http://{host}:{api.volume_port}/v3"),
            Service("image", "glance", f"http://{host}:{api.image_port}"),
            Service("identity", "keystone", f"http://{host}:{api.identity_port}/v3"))


def _catalog(services: tuple[Service, ...]) -> list[dict[str, Any]]:
    return [{"id": svc.type, "type": svc.type, "name": svc.name, "endpoints": [
        {"id": f"{svc.type}-{interface}", "interface": interface, "region": REGION,
         "region_id": REGION, "url": svc.url} for interface in ("public", "internal")]}
        for svc in services]


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _domain_ok(holder: dict[str, Any]) -> bool:
    domain = holder.get("domain")
    if domain is None:
        return True
    return bool(domain.get("id", "default") == "default" and
                domain.get("name", "Default") == "Default")


# -- request schemas --------------------------------------------------------
_DOMAIN = {"type": "object", "properties": {"id": {"type": "string"},
                                             "name": {"type": "string"}}}
_NAMED = {"type": "object", "properties": {
    "id": {"type": "string", "maxLength": 255}, "name": {"type": "string", "maxLength": 255},
    "domain": _DOMAIN}}
AUTH_BODY = validation.Body.of({
    "type": "object", "required": ["auth"], "properties": {"auth": {
        "type": "object", "required": ["identity"], "properties": {
            "identity": {"type": "object", "required": ["methods"], "properties": {
                "methods": {"type": "array", "minItems": 1,
                            "items": {"type": "string", "maxLength": 64}},
                "password": {"type": "object", "required": ["user"], "properties": {
                    "user": {**_NAMED, "required": ["password"], "properties": {
                        **_NAMED["properties"],  # type: ignore[dict-item]
                        "password": {"type": "string", "maxLength": 4096}}}}},
                "application_credential": {**_NAMED, "required": ["secret"], "properties": {
                    **_NAMED["properties"],  # type: ignore[dict-item]
                    "secret": {"type": "string", "maxLength": 4096}, "user": _NAMED}},
            }},
            "scope": {"type": ["object", "string"], "properties": {"project": _NAMED}},
        }}}})


class IdentityApi:
    def __init__(self, identity: LocalIdentity, services: tuple[Service, ...]) -> None:
        self.identity = identity
        self.catalog = _catalog(services)

    # -- helpers ----------------------------------------------------------------
    def caller(self, req: falcon.Request) -> TokenData:
        token = req.get_header("X-Auth-Token")
        if not token:
            raise unauthorized(_AUTH_NEEDED)
        try:
            return self.identity.validate(token)
        except InvalidToken as exc:
            raise unauthorized(str(exc)) from exc

    def subject(self, req: falcon.Request, caller: TokenData) -> tuple[str, TokenData]:
        token = req.get_header("X-Subject-Token")
        if not token:
            raise ApiError(400, "Expecting to find X-Subject-Token in the request headers.")
        try:
            data = self.identity.validate(token)
        except InvalidToken as exc:
            raise ApiError(404, f"Could not find token: {exc}") from exc
        privileged = {"admin", "service"} & set(caller.roles)
        if not privileged and data.user_id != caller.user_id:
            raise ApiError(403, "You are not authorized to check another user's token: "
                                "that needs the admin or service role.")
        return token, data

    def token_body(self, data: TokenData, methods: list[str],
                   with_catalog: bool = True) -> dict[str, Any]:
        token: dict[str, Any] = {
            "methods": methods,
            "user": {"id": data.user_id, "name": data.user_name, "domain": DOMAIN,
                     "password_expires_at": None},
            "audit_ids": [data.id[:22]],
            "issued_at": _when(data.issued_at),
            "expires_at": _when(data.expires_at),
            "project": {"id": data.project_id, "name": data.project_name, "domain": DOMAIN},
            "is_domain": False,
            "roles": [{"id": r, "name": r} for r in data.roles],
        }
        if data.app_credential_id is not None:
            token["application_credential"] = {"id": data.app_credential_id,
                                               "restricted": True}
        if with_catalog:
            token["catalog"] = self.catalog
        return {"token": token}

    # -- routes -------------------------------------------------------------------
    def on_post_tokens(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth = AUTH_BODY.parse(req)["auth"]
        identity = auth["identity"]
        methods = identity["methods"]
        project_ref, by_id = _scope(auth.get("scope"))
        try:
            if methods == ["password"] and "password" in identity:
                issued = self._password(identity["password"]["user"], project_ref, by_id)
            elif methods == ["application_credential"] and \
                    "application_credential" in identity:
                issued = self._app_credential(identity["application_credential"])
            else:
                raise unauthorized("Tether's identity takes the password or the "
                                   "application_credential method, one at a time.")
        except AuthFailed as exc:
            raise unauthorized(str(exc)) from exc
        resp.set_header("X-Subject-Token", issued.token)
        with_catalog = "nocatalog" not in req.params
        _reply(resp, 201, self.token_body(issued.data, methods, with_catalog))

    def _password(self, user: dict[str, Any], project: str | None, by_id: bool) -> Issued:
        if not _domain_ok(user):
            raise AuthFailed(_AUTH_NEEDED)
        name = user.get("name")
        if name is None and "id" in user:
            try:
                name = self.identity.store.user(user["id"]).name
            except IdentityNotFound as exc:  # as any wrong credential
                raise AuthFailed(_AUTH_NEEDED) from exc
        if name is None:
            raise AuthFailed(_AUTH_NEEDED)
        return self.identity.password_token(name, user["password"], project, by_id)

    def _app_credential(self, cred: dict[str, Any]) -> Issued:
        if "id" in cred:
            return self.identity.app_credential_token(cred["secret"], cred_id=cred["id"])
        user = cred.get("user") or {}
        if "name" not in cred or not _domain_ok(user):
            raise AuthFailed("An application credential is named by its id, or by its "
                             "name and its user.")
        user_name = user.get("name")
        if user_name is None and "id" in user:
            try:
                user_name = self.identity.store.user(user["id"]).name
            except IdentityNotFound as exc:
                raise AuthFailed(_AUTH_NEEDED) from exc
        return self.identity.app_credential_token(cred["secret"], name=cred["name"],
                                                  user_name=user_name)

    def on_get_tokens(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, data = self.subject(req, self.caller(req))
        resp.set_header("X-Subject-Token", req.get_header("X-Subject-Token") or "")
        methods = ["application_credential"] if data.app_credential_id else ["password"]
        _reply(resp, 200, self.token_body(data, methods, "nocatalog" not in req.params))

    def on_head_tokens(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.subject(req, self.caller(req))
        resp.status = 200

    def on_delete_tokens(self, req: falcon.Request, resp: falcon.Response) -> None:
        token, _ = self.subject(req, self.caller(req))
        self.identity.revoke(token)
        resp.status = 204

    def on_get_catalog(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.caller(req)
        _reply(resp, 200, {"catalog": self.catalog,
                           "links": {"self": f"{_base(req)}/v3/auth/catalog"}})

    def on_get_projects(self, req: falcon.Request, resp: falcon.Response) -> None:
        caller = self.caller(req)
        projects = [{"id": p.id, "name": p.name, "domain_id": DOMAIN["id"],
                     "description": p.description or "", "enabled": p.enabled,
                     "is_domain": False, "parent_id": DOMAIN["id"],
                     "links": {"self": f"{_base(req)}/v3/projects/{p.id}"}}
                    for p in self.identity.store.projects_of(caller.user_id)]
        _reply(resp, 200, {"projects": projects,
                           "links": {"self": f"{_base(req)}/v3/auth/projects",
                                     "previous": None, "next": None}})


def _scope(scope: Any) -> tuple[str | None, bool]:
    if scope is None:
        return None, False
    project = scope.get("project") if isinstance(scope, dict) else None
    if project is None:
        raise unauthorized("Tether issues project-scoped tokens only: scope the request "
                           "to a project (auth.scope.project).")
    if not _domain_ok(project):
        raise unauthorized(f"Could not find project {project.get('name')!r} in that "
                           "domain: Tether has one domain, Default.")
    if "id" in project:
        return str(project["id"]), True
    if "name" in project:
        return str(project["name"]), False
    raise ApiError(400, "auth.scope.project needs an id or a name.")


def _version(base: str) -> dict[str, Any]:
    return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{base}/v3/"}],
            "media-types": [{"base": "application/json",
                             "type": "application/vnd.openstack.identity-v3+json"}]}


class _Versions:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _reply(resp, 300, {"versions": {"values": [_version(_base(req))]}})


class _V3:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _reply(resp, 200, {"version": _version(_base(req))})


def _base(req: falcon.Request) -> str:
    return f"{req.scheme}://{req.netloc}"


def _reply(resp: falcon.Response, status: int, payload: Any) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(payload)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, {"WWW-Authenticate": "Keystone uri=\"/v3\""})


def _error(resp: falcon.Response, status: int, message: str,
           headers: dict[str, str] | None = None) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps({"error": {"code": status, "title": _TITLES.get(status, "Error"),
                                      "message": message}})
    for key, value in (headers or {}).items():
        resp.set_header(key, value)


class _Pipeline:
    def __init__(self, max_body: int) -> None:
        self.max_body = max_body

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.max_body = self.max_body
        resp.set_header("x-openstack-request-id", new_request_id())
        if (req.content_length or 0) > self.max_body:
            raise validation.too_large(self.max_body)


def create_app(identity: LocalIdentity, services: tuple[Service, ...],
               max_body: int = validation.DEFAULT_MAX_BODY) -> falcon.App[Any, Any]:
    app: falcon.App[Any, Any] = falcon.App(middleware=[_Pipeline(max_body)],
                                           cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    api = IdentityApi(identity, services)
    app.add_route("/", _Versions())
    app.add_route("/v3", _V3())
    app.add_route("/v3/auth/tokens", api, suffix="tokens")
    app.add_route("/v3/auth/catalog", api, suffix="catalog")
    app.add_route("/v3/auth/projects", api, suffix="projects")

    def api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError,
                  params: dict[str, Any]) -> None:
        _error(resp, ex.status, ex.message, ex.headers)

    def http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError,
                   params: dict[str, Any]) -> None:
        message = ex.description or ex.title or "Error"
        if ex.status_code == 404:
            message = f"The resource {req.path} could not be found."
        elif ex.status_code == 405:
            message = f"The method {req.method} is not allowed for {req.path}."
        _error(resp, ex.status_code, message, dict(ex.headers or {}))

    def unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception,
                   params: dict[str, Any]) -> None:
        LOG.exception("unexpected error in %s %s", req.method, req.path)
        _error(resp, 500, "An unexpected error prevented the server from fulfilling "
                          "your request.")

    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(falcon.HTTPError, http_error)
    app.add_error_handler(ApiError, api_error)
    return app
