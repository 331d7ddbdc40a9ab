"""Volume types of the Block Storage API: one, Cinder's ``__DEFAULT__``.

Every Tether volume is of this type (a sparse file on the volume host's
backend); the type exists so that what volumes say (``volume_type``,
``volume_type_id``) can be looked up, as ``openstack volume type list/show``
and ``openstack volume create --type`` do."""

from __future__ import annotations

from typing import Any

import falcon

from tether.api import errors, wsgi
from tether.policy import authorize

NAME = "__DEFAULT__"
ID = "5f3c1a8e-7d6b-4c2e-9a41-3b8f0d2e6c17"  # fixed: the same on every Tether
_DESCRIPTION = "Default Volume Type"


def view() -> dict[str, Any]:
    return {"id": ID, "name": NAME, "description": _DESCRIPTION, "is_public": True,
            "os-volume-type-access:is_public": True, "qos_specs_id": None,
            "extra_specs": {}}


def check(name_or_id: Any) -> None:
    """A volume create's ``volume_type``: absent or empty (the default, as in
    Cinder), or this type by name or id."""
    if name_or_id is None or name_or_id in ("", NAME, ID):
        return
    raise errors.not_found(f"Volume type with name {name_or_id} could not be found; "
                           f"this service has one type, {NAME} (id {ID}).")


def _find(type_id: str, req: falcon.Request, rule: str) -> dict[str, Any]:
    authorize(wsgi.caller(req), rule)
    if type_id in (NAME, ID) or (type_id == "default"
                                 and wsgi.version(req).at_least("3.62")):
        return view()
    raise errors.not_found(f"Volume type {type_id} could not be found.")


class VolumeTypes:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        authorize(wsgi.caller(req), "volume_extension:type_get_all")
        wsgi.reply(resp, 200, {"volume_types": [view()]})


class VolumeType:
    """``GET /types/{id}``: by id or name, as Cinder; ``default`` from 3.62."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, type_id: str) -> None:
        wsgi.reply(resp, 200, {"volume_type": _find(type_id, req, "volume_extension:type_get")})


class VolumeTypeExtraSpecs:
    def on_get(self, req: falcon.Request, resp: falcon.Response, type_id: str) -> None:
        wsgi.reply(resp, 200, {"extra_specs": _find(
            type_id, req, "volume_extension:types_extra_specs:index")["extra_specs"]})
