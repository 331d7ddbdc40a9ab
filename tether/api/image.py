"""Image API (Glance v2-shaped, read-only), port 9292: enough for clients
that list images and for ``imageRef`` on server create.

``GET /`` (300, version discovery), ``GET /v2``, ``GET /v2/images`` (filters
``name``, ``status``, ``visibility``, ``disk_format``; ``limit`` and
``marker`` pages) and ``GET /v2/images/{id}``.  Images are registered on the
host (``tether image import`` / ``build-tiny``), not uploaded here.
"""

from __future__ import annotations

from typing import Any

import falcon

from tether.api import errors, wsgi
from tether.api.auth import Authenticator
from tether.api.schemas.image import IMAGE_LIST
from tether.api.validation import DEFAULT_MAX_BODY, query_of, validated
from tether.api.versions import IMAGE
from tether.api.wsgi import WsgiApp
from tether.db.records import ImageRecord
from tether.image.registry import ImageRegistry

COLLECTIONS = ("images", "schemas")
_FILTERS = ("status", "visibility", "disk_format")


def _time(value: Any) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else None


def image_view(image: ImageRecord) -> dict[str, Any]:
    """Glance v2's image: fixed fields, then the properties as top-level strings."""
    body: dict[str, Any] = {
        str(k): v if isinstance(v, str) else str(v) for k, v in (image.properties or {}).items()}
    body.update({
        "id": image.id, "name": image.name, "status": image.status,
        "visibility": image.visibility, "protected": False, "os_hidden": False,
        "owner": image.owner, "disk_format": image.disk_format,
        "container_format": image.container_format, "size": image.size,
        "virtual_size": None, "checksum": None, "os_hash_algo": "sha256" if image.checksum
        else None, "os_hash_value": image.checksum, "min_ram": 0, "min_disk": 0,
        "tags": [], "created_at": _time(image.created_at),
        "updated_at": _time(image.updated_at or image.created_at),
        "self": f"/v2/images/{image.id}", "file": f"/v2/images/{image.id}/file",
        "schema": "/v2/schemas/image",
    })
    return body


class Images:
    def __init__(self, registry: ImageRegistry) -> None:
        self.registry = registry

    @validated(query=IMAGE_LIST)
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        q = query_of(req)
        rows = self.registry.list(wsgi.caller(req), q.get("name"))
        for key in _FILTERS:
            if key in q:
                rows = [r for r in rows if getattr(r, key) == q[key]]
        marker = q.get("marker")
        if marker is not None:
            ids = [r.id for r in rows]
            if marker not in ids:
                raise errors.bad_request(f"marker {marker}: no such image in this listing.")
            rows = rows[ids.index(marker) + 1:]
        body: dict[str, Any] = {"first": "/v2/images", "schema": "/v2/schemas/images"}
        limit = q.get("limit")
        if limit is not None:
            more = len(rows) > limit
            rows = rows[:limit]
            if more and rows:
                body["next"] = f"/v2/images?limit={limit}&marker={rows[-1].id}"
        body["images"] = [image_view(r) for r in rows]
        wsgi.reply(resp, 200, body)


class Image:
    def __init__(self, registry: ImageRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response, image_id: str) -> None:
        wsgi.reply(resp, 200, image_view(self.registry.get(wsgi.caller(req), image_id)))


def create_app(registry: ImageRegistry, auth: Authenticator,
               max_body: int = DEFAULT_MAX_BODY) -> WsgiApp:
    app = wsgi.create_app(IMAGE, auth, COLLECTIONS, server_fault="serverError",
                          root_status=300, max_body=max_body)
    app.add_route("/v2/images", Images(registry))
    app.add_route("/v2/images/{image_id}", Image(registry))
    return app
