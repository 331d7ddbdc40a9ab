"""The local identity (``[api] auth_strategy = local``): projects, users,
role assignments, application credentials and revoked tokens.

Names are unique (one domain, ``Default``), as is a role assignment and an
application credential's name per user: two API processes bootstrapping the
admin at once insert one row each, and the second insert fails.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "identity_projects",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("description", sa.Text),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "identity_users",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "identity_role_assignments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("identity_users.id"),
                  nullable=False),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("identity_projects.id"),
                  nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
    )
    op.create_index("uq_identity_assignment", "identity_role_assignments",
                    ["user_id", "project_id", "role"], unique=True)
    op.create_index("ix_identity_assignment_project", "identity_role_assignments",
                    ["project_id"])
    op.create_table(
        "identity_application_credentials",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(32), sa.ForeignKey("identity_users.id"),
                  nullable=False),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("identity_projects.id"),
                  nullable=False),
        sa.Column("secret_hash", sa.String(255), nullable=False),
        sa.Column("roles", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("uq_identity_app_credential_name", "identity_application_credentials",
                    ["user_id", "name"], unique=True)
    op.create_table(
        "identity_revoked_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("expires_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_identity_revoked_expires", "identity_revoked_tokens",
                    ["expires_at"])
