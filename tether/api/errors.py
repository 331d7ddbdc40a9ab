"""Every API error is a JSON body in the OpenStack shape
``{"<fault>": {"code": N, "message": "..."}}``; nothing a client sends may
produce a 500 (a 500 means a bug or a failed backend, and is logged)."""

from __future__ import annotations

import json
import logging
from typing import Any

import falcon

from tether import exceptions
from tether.policy import PolicyNotAuthorized
from tether.states.machine import InvalidTransition

LOG = logging.getLogger(__name__)

FAULT_NAMES = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    413: "overLimit",
    415: "badMediaType",
    501: "notImplemented",
    503: "serviceUnavailable",
}


def fault_body(status: int, message: str, server_fault: str = "computeFault") -> dict[str, Any]:
    name = FAULT_NAMES.get(status, server_fault)
    return {name: {"code": status, "message": message}}


class ApiError(Exception):
    """An error raised by the REST layer itself (bad body, bad version...)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def not_found(message: str) -> ApiError:
    return ApiError(404, message)


def _respond(resp: falcon.Response, status: int, message: str,
             server_fault: str, headers: dict[str, str] | None = None) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.text = json.dumps(fault_body(status, message, server_fault))
    for key, value in (headers or {}).items():
        resp.set_header(key, value)


def install(app: falcon.App[falcon.Request, falcon.Response], server_fault: str) -> None:
    """Register the error handlers on ``app`` (``server_fault``: the name a 500
    carries, ``computeFault`` for Nova, ``serverError`` for Cinder... clients
    read only the code and message)."""

    def api_error(req: falcon.Request, resp: falcon.Response, ex: ApiError,
                  params: dict[str, Any]) -> None:
        _respond(resp, ex.status, ex.message, server_fault, ex.headers)

    def domain_error(req: falcon.Request, resp: falcon.Response,
                     ex: exceptions.TetherError, params: dict[str, Any]) -> None:
        if ex.code >= 500:
            LOG.error("%s %s failed: %s", req.method, req.path, ex.message)
        _respond(resp, ex.code, ex.message, server_fault)

    def transition_error(req: falcon.Request, resp: falcon.Response,
                         ex: InvalidTransition, params: dict[str, Any]) -> None:
        _respond(resp, 400, f"Invalid {ex.resource.lower()}: {ex}", server_fault)

    def policy_error(req: falcon.Request, resp: falcon.Response,
                     ex: PolicyNotAuthorized, params: dict[str, Any]) -> None:
        _respond(resp, 403, str(ex), server_fault)

    def http_error(req: falcon.Request, resp: falcon.Response,
                   ex: falcon.HTTPError, params: dict[str, Any]) -> None:
        message = ex.description or ex.title or "Error"
        if isinstance(ex, falcon.MediaMalformedError | falcon.MediaNotFoundError):
            message = "Malformed request body: " + (ex.description or "invalid JSON")
        elif ex.status_code == 405:
            message = f"The method {req.method} is not allowed for {req.path}."
        elif ex.status_code == 404:
            message = f"The resource {req.path} could not be found."
        headers = dict(ex.headers or {})
        _respond(resp, ex.status_code, message, server_fault, headers)

    def unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception,
                   params: dict[str, Any]) -> None:
        LOG.exception("unexpected error in %s %s", req.method, req.path)
        _respond(resp, 500, "The server has either erred or is incapable of performing "
                 "the requested operation.", server_fault)

    # falcon picks the most specific registered handler for an exception type
    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(falcon.HTTPError, http_error)
    app.add_error_handler(ApiError, api_error)
    app.add_error_handler(exceptions.TetherError, domain_error)
    app.add_error_handler(InvalidTransition, transition_error)
    app.add_error_handler(PolicyNotAuthorized, policy_error)
