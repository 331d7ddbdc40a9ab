"""What both REST APIs share: a Falcon app with request ids, the optional
``/{project_id}`` URL segment, version discovery, microversions, auth and
OpenStack-shaped errors.  Handlers receive ``req.context.api`` (the caller)
and ``req.context.version`` (the negotiated microversion)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

import falcon

from tether.api import errors, validation
from tether.api.auth import Authenticator
from tether.api.versions import ApiVersions, Version
from tether.context import RequestContext, new_request_id

LOG = logging.getLogger("tether.api")

WsgiApp = falcon.App[falcon.Request, falcon.Response]


class App(falcon.App[falcon.Request, falcon.Response]):
    """A falcon App that tells which paths it serves without a token, for
    middleware in front of it (keystonemiddleware's) to let them through too."""

    public_paths: frozenset[str] = frozenset()


class ApiMiddleware:
    def __init__(self, versions: ApiVersions, auth: Authenticator,
                 collections: Iterable[str], public: Iterable[str] = (),
                 max_body: int = validation.DEFAULT_MAX_BODY) -> None:
        self.max_body = max_body
        self.versions = versions
        self.auth = auth
        self.collections = frozenset(collections)
        # discovery documents: clients read them before they have a token
        self.public = frozenset(("/", versions.path, versions.path + "/", *public))

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()
        request_id = new_request_id()
        req.context.request_id = request_id
        resp.set_header("x-openstack-request-id", request_id)
        # before anything else, the caller's identity included: a body over the
        # limit is refused unread (bodies are read with this limit too)
        req.context.max_body = self.max_body
        if (req.content_length or 0) > self.max_body:
            raise validation.too_large(self.max_body)
        url_project = self._strip_project(req)
        if req.path in self.public:
            req.context.public = True
            return
        req.context.public = False
        headers = {k.lower(): v for k, v in req.headers.items()}
        version = self.versions.negotiate(headers)
        req.context.version = version
        for key, value in self.versions.response_headers(version).items():
            resp.set_header(key, value)
        ctx = self.auth.authenticate(headers, request_id)
        if url_project and url_project != ctx.project_id and not ctx.privileged:
            raise errors.ApiError(
                400, f"Malformed request URL: URL's project_id '{url_project}' doesn't "
                     f"match Context's project_id '{ctx.project_id}'")
        req.context.api = ctx

    def _strip_project(self, req: falcon.Request) -> str | None:
        prefix = self.versions.path + "/"
        if not req.path.startswith(prefix):
            return None
        head, _, rest = req.path[len(prefix):].partition("/")
        if not head or not rest or head in self.collections:
            return None
        req.path = f"{self.versions.path}/{rest}"
        return head

    def process_response(self, req: falcon.Request, resp: falcon.Response,
                         resource: object, req_succeeded: bool) -> None:
        started = getattr(req.context, "started", None)
        if started is not None:
            LOG.info("%s %s %s %.1fms [%s]", req.method, req.relative_uri, resp.status,
                     (time.perf_counter() - started) * 1000, req.context.request_id)


class VersionList:
    """``GET /``: every version (Cinder answers 300 Multiple Choices, Nova 200)."""

    def __init__(self, versions: ApiVersions, status: int) -> None:
        self.versions, self.status = versions, status

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reply(resp, self.status, {"versions": [self.versions.document(base_url(req))]})


class VersionDocument:
    """``GET /v3`` or ``/v2.1`` (with or without the trailing slash)."""

    def __init__(self, versions: ApiVersions) -> None:
        self.versions = versions

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reply(resp, 200, {"version": self.versions.document(base_url(req))})


def create_app(versions: ApiVersions, auth: Authenticator, collections: Iterable[str],
               server_fault: str, root_status: int, public: Iterable[str] = (),
               max_body: int = validation.DEFAULT_MAX_BODY) -> WsgiApp:
    """An app with the request pipeline, the error handlers and version discovery;
    ``public``: more paths served without a token; ``max_body``: the largest
    request body in bytes (413 beyond)."""
    middleware = ApiMiddleware(versions, auth, collections, public, max_body)
    app = App(middleware=[middleware], cors_enable=False)
    app.public_paths = middleware.public
    app.req_options.strip_url_path_trailing_slash = True
    app.resp_options.default_media_type = falcon.MEDIA_JSON
    errors.install(app, server_fault)
    app.add_route("/", VersionList(versions, root_status))
    app.add_route(versions.path, VersionDocument(versions))
    return app


def caller(req: falcon.Request) -> RequestContext:
    ctx: RequestContext = req.context.api
    return ctx


def version(req: falcon.Request) -> Version:
    v: Version = req.context.version
    return v


def reply(resp: falcon.Response, status: int, payload: Any = None) -> None:
    resp.status = status
    if payload is None:
        resp.text = None
        if status == 204:  # no content, so no content type either
            resp.content_type = None
        return
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(payload)


def base_url(req: falcon.Request) -> str:
    return f"{req.scheme}://{req.netloc}"
