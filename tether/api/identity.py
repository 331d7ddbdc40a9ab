"""A static Identity v3 version document, for clients that insist on one.

Tether has no Keystone: tokens are checked by :mod:`tether.api.auth`.  But
openstacksdk (and so the ``openstack`` CLI) builds an identity proxy for
commands such as ``volume list`` and ``server list`` and, unless the identity
endpoint is overridden, discovers its version at the auth endpoint; with
``auth_type: admin_token`` that is the Compute API, whose v2.1 document
makes the SDK refuse ("requires API version '3'").  Pointing
``identity_endpoint_override`` at ``http://<host>:8774/identity/v3`` answers
that discovery.  Besides, a project can be looked up (by id, or by name for
an admin: ``openstack quota show/set PROJECT`` does); nothing else of
Keystone is served: no tokens, no catalog.
"""

from __future__ import annotations

from typing import Any

import falcon

from tether.api import wsgi
from tether.api.schemas.quotas import PROJECT_LIST
from tether.api.validation import query_of, validated
from tether.policies.quotas import GET_PROJECT, LIST_PROJECTS
from tether.policy import authorize

PATH = "/identity"
V3_PATH = PATH + "/v3"
PUBLIC_PATHS = (PATH, PATH + "/", V3_PATH, V3_PATH + "/")


def _v3(base: str) -> dict[str, Any]:
    return {
        "id": "v3.14",
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base}{V3_PATH}/"}],
        "media-types": [{"base": "application/json",
                         "type": "application/vnd.openstack.identity-v3+json"}],
    }


class IdentityVersions:
    """``GET /identity``: Keystone answers its root with 300 and the list."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        wsgi.reply(resp, 300, {"versions": {"values": [_v3(wsgi.base_url(req))]}})


class IdentityV3:
    """``GET /identity/v3``."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        wsgi.reply(resp, 200, {"version": _v3(wsgi.base_url(req))})


def add_routes(app: wsgi.WsgiApp) -> None:
    app.add_route(PATH, IdentityVersions())
    app.add_route(V3_PATH, IdentityV3())
    app.add_route(V3_PATH + "/projects", Projects())
    app.add_route(V3_PATH + "/projects/{project_id}", Project())


def _project(project_id: str, base: str) -> dict[str, Any]:
    return {"id": project_id, "name": project_id, "domain_id": "default", "enabled": True,
            "description": "", "is_domain": False, "parent_id": "default", "tags": [],
            "options": {}, "links": {"self": f"{base}{V3_PATH}/projects/{project_id}"}}


class Project:
    """``GET /identity/v3/projects/{id}``: what ``openstack quota show/set
    PROJECT`` looks the project up with.  Tether keeps no projects of its
    own: a token's project is one, named by its id."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, project_id: str) -> None:
        authorize(wsgi.caller(req), GET_PROJECT, project_id)
        wsgi.reply(resp, 200, {"project": _project(project_id, wsgi.base_url(req))})


class Projects:
    """``GET /identity/v3/projects?name=``: the lookup by name (ids are names)."""

    @validated(query=PROJECT_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        authorize(wsgi.caller(req), LIST_PROJECTS)
        name = query_of(req).get("name")
        found = [] if not name else [_project(name, wsgi.base_url(req))]
        wsgi.reply(resp, 200, {"projects": found, "links": {"self": None, "next": None,
                                                             "previous": None}})
