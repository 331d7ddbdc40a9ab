"""Who is asking: carried from the API through RPC to the services."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any


def new_request_id() -> str:
    return f"req-{uuid.uuid4()}"


@dataclass(frozen=True)
class RequestContext:
    user_id: str
    project_id: str
    roles: tuple[str, ...] = ()
    is_admin: bool = False
    is_service: bool = False
    request_id: str = field(default_factory=new_request_id)
    # the token the request came with, for calls made on the caller's behalf;
    # never serialised into logs (repr=False)
    auth_token: str | None = field(default=None, repr=False)

    @property
    def privileged(self) -> bool:
        """Admins and Tether's own services may see secrets and act across projects."""
        return self.is_admin or self.is_service

    def to_dict(self) -> dict[str, Any]:
        # written out: dataclasses.asdict deep-copies recursively, and every
        # RPC message and notification carries a context
        return {"user_id": self.user_id, "project_id": self.project_id,
                "roles": list(self.roles), "is_admin": self.is_admin,
                "is_service": self.is_service, "request_id": self.request_id,
                "auth_token": self.auth_token}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RequestContext:
        return cls(
            user_id=data["user_id"], project_id=data["project_id"],
            roles=tuple(data.get("roles", ())), is_admin=bool(data.get("is_admin")),
            is_service=bool(data.get("is_service")),
            request_id=data.get("request_id") or new_request_id(),
            auth_token=data.get("auth_token"),
        )


def admin_context(user_id: str = "tether", project_id: str = "service",
                  request_id: str | None = None) -> RequestContext:
    """Context for work a service does on its own (reconcile, sweeper);
    ``request_id``: of the request whose operation it finishes."""
    return RequestContext(user_id, project_id, ("admin", "service"), is_admin=True,
                          is_service=True, request_id=request_id or new_request_id())
