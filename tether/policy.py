"""Who may do what: every API handler checks one named rule, through one
oslo.policy ``Enforcer`` per process.

The defaults (``tether/policies``) are Nova's, Cinder's and Glance's rules in
their secure-RBAC form; an operator overrides any of them in the policy file
(``[oslo_policy] policy_file``, YAML or JSON), which is read again whenever
it changes.  Handlers and services call :func:`authorize` (403 unless
allowed), :func:`allowed` (a yes/no, for optional fields) and
:func:`visible` (which rows of a listing the caller may see).

The target of a check is the resource's project; a check with no resource
(create, list) targets the caller's own project, as Nova and Cinder do.
"""

from __future__ import annotations

import threading
from typing import Any

from oslo_config import cfg
from oslo_policy import policy as oslo_policy

from tether.context import RequestContext
from tether.policies import list_rules

# Keystone's default implied roles: a token with admin also carries member
# and reader.  Expanded here so that any identity source (noauth, the local
# identity, a Keystone without implied roles) is judged alike.
IMPLIED_ROLES = {"admin": ("member", "reader"), "manager": ("member", "reader"),
                 "member": ("reader",)}


class PolicyNotAuthorized(Exception):
    def __init__(self, rule: str) -> None:
        super().__init__(f"Policy doesn't allow {rule} to be performed.")
        self.rule = rule


_lock = threading.Lock()
_enforcer: oslo_policy.Enforcer | None = None


def init(conf: cfg.ConfigOpts) -> oslo_policy.Enforcer:
    """Make this process's enforcer from ``conf`` (its ``[oslo_policy]``) and
    check the policy file now, so a broken one stops the service at start
    rather than failing requests."""
    global _enforcer  # noqa: PLW0603 - one enforcer per process, as Nova's
    enforcer = oslo_policy.Enforcer(conf)
    enforcer.register_defaults(list_rules())
    enforcer.load_rules()
    with _lock:
        _enforcer = enforcer
    return enforcer


def get_enforcer() -> oslo_policy.Enforcer:
    """This process's enforcer; the defaults alone until :func:`init`."""
    if _enforcer is None:
        conf = cfg.ConfigOpts()
        conf(args=[], default_config_files=[], default_config_dirs=[], use_env=False)
        init(conf)
    assert _enforcer is not None
    return _enforcer


def roles_with_implied(roles: tuple[str, ...] | list[str]) -> list[str]:
    out = list(dict.fromkeys(roles))
    for role in list(out):
        out.extend(r for r in IMPLIED_ROLES.get(role, ()) if r not in out)
    return out


def credentials(ctx: RequestContext) -> dict[str, Any]:
    """What rules are checked against (never the token itself: oslo.policy
    logs credentials at debug level)."""
    return {"user_id": ctx.user_id, "project_id": ctx.project_id,
            "roles": roles_with_implied(ctx.roles), "is_admin": ctx.is_admin,
            "service_roles": ["service"] if ctx.is_service else []}


def authorize(ctx: RequestContext, rule: str, project_id: str | None = None) -> None:
    """Raise PolicyNotAuthorized unless ``ctx`` may apply ``rule`` to a
    resource of ``project_id`` (None: no particular resource: the caller's
    own project)."""
    enforcer = get_enforcer()
    if rule not in enforcer.registered_rules:
        raise KeyError(f"no policy rule {rule!r}")  # a programming error, not a client's
    target = {"project_id": ctx.project_id if project_id is None else project_id}
    try:
        with _lock:  # load_rules may swap the rule set under a concurrent check
            ok = enforcer.enforce(rule, target, credentials(ctx))
    except oslo_policy.InvalidScope:
        ok = False
    if not ok:
        raise PolicyNotAuthorized(rule)


def allowed(ctx: RequestContext, rule: str, project_id: str | None = None) -> bool:
    try:
        authorize(ctx, rule, project_id)
    except PolicyNotAuthorized:
        return False
    return True


def visible(ctx: RequestContext, rule: str, project_id: str | None) -> bool:
    """Whether a listing shows the caller a row of ``project_id`` (the row's
    own show rule: a policy file that hides a resource hides it from lists
    too)."""
    return allowed(ctx, rule, project_id)
