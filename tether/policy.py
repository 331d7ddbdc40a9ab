"""Who may do what: every API handler checks one named rule.

Rules are checks over the caller's context and the target's project; the table
is the single place an operator would look.  (A file-based override can come
with Keystone; the names match Nova/Cinder's where they exist.)
"""

from __future__ import annotations

from collections.abc import Callable

from tether.context import RequestContext

Check = Callable[[RequestContext, str | None], bool]


def _admin(ctx: RequestContext, _project: str | None) -> bool:
    return ctx.is_admin


def _service_or_admin(ctx: RequestContext, _project: str | None) -> bool:
    return ctx.is_admin or ctx.is_service


def _owner_or_admin(ctx: RequestContext, project: str | None) -> bool:
    return ctx.privileged or project is None or project == ctx.project_id


def _any_user(_ctx: RequestContext, _project: str | None) -> bool:
    return True


RULES: dict[str, Check] = {
    # block storage
    "volume:create": _any_user,
    "volume:get": _owner_or_admin,
    "volume:get_all": _any_user,
    "volume:delete": _owner_or_admin,
    "volume:update": _owner_or_admin,
    "volume:all_projects": _admin,
    "volume:reserve": _owner_or_admin,
    "volume:unreserve": _owner_or_admin,
    "volume:begin_detaching": _owner_or_admin,
    "volume:roll_detaching": _owner_or_admin,
    "volume:initialize_connection": _owner_or_admin,
    "volume:terminate_connection": _owner_or_admin,
    "volume:attach": _owner_or_admin,
    "volume:detach": _owner_or_admin,
    "volume:reset_status": _admin,
    "volume:force_detach": _admin,
    "volume:see_chap_secret": _service_or_admin,
    "volume_type:get": _any_user,
    "attachment:create": _owner_or_admin,
    "attachment:get": _owner_or_admin,
    "attachment:get_all": _any_user,
    "attachment:update": _owner_or_admin,
    "attachment:complete": _owner_or_admin,
    "attachment:delete": _owner_or_admin,
    # compute
    "server:create": _any_user,
    "server:get": _owner_or_admin,
    "server:list": _any_user,
    "server:all_projects": _admin,
    "server:delete": _owner_or_admin,
    "server:stop": _owner_or_admin,
    "server:start": _owner_or_admin,
    "server:lock": _owner_or_admin,
    "server:shelve": _owner_or_admin,
    "server:shelve_offload": _admin,
    "server:unshelve": _owner_or_admin,
    "server:unlock": _owner_or_admin,
    "server:see_host": _admin,
    "server:volume_attachments:index": _owner_or_admin,
    "server:volume_attachments:show": _owner_or_admin,
    "server:volume_attachments:create": _owner_or_admin,
    "server:volume_attachments:update": _owner_or_admin,
    "server:volume_attachments:delete": _owner_or_admin,
    "server:instance_actions": _owner_or_admin,
    "server:instance_actions:events:traceback": _admin,
    "flavor:list": _any_user,
    # images (a private image: its project and admins; public ones: everyone)
    "image:get": _owner_or_admin,
    "image:get_all": _any_user,
}


class PolicyNotAuthorized(Exception):
    def __init__(self, rule: str) -> None:
        super().__init__(f"Policy doesn't allow {rule} to be performed.")
        self.rule = rule


def authorize(ctx: RequestContext, rule: str, project_id: str | None = None) -> None:
    """Raise PolicyNotAuthorized unless ``ctx`` may apply ``rule`` to a
    resource of ``project_id`` (None: no particular resource)."""
    check = RULES.get(rule)
    if check is None:
        raise KeyError(f"no policy rule {rule!r}")  # a programming error, not a client's
    if not check(ctx, project_id):
        raise PolicyNotAuthorized(rule)


def allowed(ctx: RequestContext, rule: str, project_id: str | None = None) -> bool:
    try:
        authorize(ctx, rule, project_id)
    except PolicyNotAuthorized:
        return False
    return True
