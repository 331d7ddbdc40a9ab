"""The rules the others are built from (named as in Nova's base policy)."""

from __future__ import annotations

from oslo_policy import policy

ADMIN = "rule:context_is_admin"
PROJECT_READER_OR_ADMIN = "rule:project_reader_or_admin"
PROJECT_MEMBER_OR_ADMIN = "rule:project_member_or_admin"
SERVICE_OR_ADMIN = "rule:service_or_admin"
ANY = "@"

SCOPE = ["project"]
"""Tether's tokens are all project-scoped (no system scope)."""

RULES: list[policy.RuleDefault] = [
    policy.RuleDefault(
        "context_is_admin", "role:admin",
        "Holders of the admin role: every project's resources, admin-only actions."),
    policy.RuleDefault(
        "project_member_api", "role:member and project_id:%(project_id)s",
        "A member of the resource's project: may create and change it."),
    policy.RuleDefault(
        "project_reader_api", "role:reader and project_id:%(project_id)s",
        "A reader of the resource's project: may look, never change."),
    policy.RuleDefault(
        "service_api", "role:service",
        "Tether's own services (the service token)."),
    policy.RuleDefault(
        "project_member_or_admin", "rule:project_member_api or rule:context_is_admin",
        "Project members and admins."),
    policy.RuleDefault(
        "project_reader_or_admin", "rule:project_reader_api or rule:context_is_admin",
        "Project readers (members and admins hold reader too) and admins."),
    policy.RuleDefault(
        "service_or_admin", "rule:service_api or rule:context_is_admin",
        "Tether's services and admins."),
]


def rule(name: str, check_str: str, description: str,
         *operations: tuple[str, str]) -> policy.DocumentedRuleDefault:
    """A documented, project-scoped default; ``operations``: (method, path)."""
    return policy.DocumentedRuleDefault(
        name=name, check_str=check_str, description=description,
        operations=[{"method": m, "path": p} for m, p in operations], scope_types=SCOPE)
