"""The OpenAPI 3.1 document of each REST API, served without a token at
``GET /openapi.json`` on the API's own port.

Each API module declares its operations as a table of :class:`Operation`
next to its routes; a test holds the table and the routes equal in both
directions (every route's methods are documented, every documented
operation is routed)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import falcon

from tether.api import wsgi
from tether.api.errors import FAULT_NAMES
from tether.api.validation import Body, Query
from tether.api.versions import ApiVersions

PATH = "/openapi.json"
_PARAM_RE = re.compile(r"{([a-z_]+)}")


@dataclass(frozen=True)
class Operation:
    method: str  # GET, POST, PUT, DELETE
    path: str  # a route template, e.g. /v3/volumes/{volume_id}
    summary: str
    status: int  # the success status
    body: Body | None = None  # the JSON body's schema, the handler's own (@validated)
    query: Query | None = None  # the query parameters the handler reads, likewise
    since: str | None = None  # the first microversion that has it
    public: bool = False  # served without a token
    errors: tuple[int, ...] = ()


def _fault_schema() -> dict[str, Any]:
    fault = {"type": "object", "required": ["code", "message"],
             "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}}
    return {"type": "object", "minProperties": 1, "maxProperties": 1,
            "additionalProperties": fault}


def _request_body(body: Body) -> dict[str, Any]:
    """The schema of the newest microversion; the earlier ones (when the body
    changed with a microversion) under ``x-openstack-microversions``."""
    out: dict[str, Any] = {"required": True, "content": {
        "application/json": {"schema": body.latest}}}
    if len(body.variants) > 1:
        out["x-openstack-microversions"] = [
            {"since": since, "schema": schema} for since, schema in body.variants]
    return out


def _operation(op: Operation, versions: ApiVersions) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PARAM_RE.findall(op.path)]
    if op.query is not None:
        params += [{"name": name, "in": "query", "required": False, "schema": schema}
                   for name, schema in op.query.params.items()]
    out: dict[str, Any] = {
        "operationId": f"{op.method.lower()}:{op.path}",
        "summary": op.summary,
        "parameters": params,
        "responses": {str(op.status): {
            "description": "success" if op.status != 204 else "success, no body",
            **({} if op.status in (202, 204) and op.method != "POST"
               else {"content": {"application/json": {"schema": {"type": "object"}}}})}},
    }
    if op.public:
        out["security"] = []
    else:
        params.append({
            "name": "OpenStack-API-Version", "in": "header", "required": False,
            "description": f"'{versions.service_type} X.Y' ({versions.minimum} to "
                           f"{versions.maximum}) or 'latest'; without it, "
                           f"{versions.minimum}",
            "schema": {"type": "string", "maxLength": 64}})
        for status in sorted({400, 401, 403, 404, *op.errors,
                              *((413,) if op.body is not None else ())}):
            out["responses"][str(status)] = {
                "description": FAULT_NAMES.get(status, "error"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Fault"}}}}
    if op.since:
        out["x-openstack-min-microversion"] = op.since
        out["description"] = (f"Needs microversion {op.since} or later "
                              f"(OpenStack-API-Version: {versions.service_type} {op.since}).")
    if op.body is not None:
        out["requestBody"] = _request_body(op.body)
    return out


def document(versions: ApiVersions, title: str, description: str,
             operations: Sequence[Operation], base_url: str = "") -> dict[str, Any]:
    """The OpenAPI document of one API."""
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, versions)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": str(versions.maximum), "description": description},
        "paths": paths,
        "components": {
            "securitySchemes": {"token": {
                "type": "apiKey", "in": "header", "name": "X-Auth-Token",
                "description": "'<user>:<project>' (noauth), a token without a colon "
                               "(the default project), or the service token"}},
            "schemas": {"Fault": _fault_schema()},
        },
        "security": [{"token": []}],
    }
    if base_url:
        doc["servers"] = [{"url": base_url}]
    return doc


class OpenApiDocument:
    def __init__(self, versions: ApiVersions, title: str, description: str,
                 operations: Sequence[Operation]) -> None:
        self.args = (versions, title, description, tuple(operations))

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        wsgi.reply(resp, 200, document(*self.args, base_url=wsgi.base_url(req)))


def discovery_operations(versions: ApiVersions, root_status: int) -> list[Operation]:
    """What every API serves without a token: versions and this document."""
    return [
        Operation("GET", "/", "List the API versions", root_status, public=True),
        Operation("GET", versions.path, "Show the API version and its microversion range",
                  200, public=True),
        Operation("GET", PATH, "This OpenAPI document", 200, public=True),
    ]
