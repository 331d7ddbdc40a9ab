"""A static Identity v3 version document, for clients that insist on one.

Tether has no Keystone: tokens are checked by :mod:`tether.api.auth`.  But
openstacksdk (and so the ``openstack`` CLI) builds an identity proxy for
commands such as ``volume list`` and ``server list`` and, unless the identity
endpoint is overridden, discovers its version at the auth endpoint; with
``auth_type: admin_token`` that is the Compute API, whose v2.1 document
makes the SDK refuse ("requires API version '3'").  Pointing
``identity_endpoint_override`` at ``http://<host>:8774/identity/v3`` answers
that discovery.  Nothing else of Keystone is served: no tokens, no catalog.
"""

from __future__ import annotations

from typing import Any

import falcon

from tether.api import wsgi

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
