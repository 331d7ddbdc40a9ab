"""Quotas: per-project limits (``quotas``) and the row a create locks
before it counts a project's usage (``quota_locks``).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.create_table(
        "quotas",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("hard_limit", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
    )
    op.create_index("uq_quotas_project_resource", "quotas", ["project_id", "resource"],
                    unique=True)
    op.create_table(
        "quota_locks",
        sa.Column("project_id", sa.String(255), primary_key=True),
        sa.Column("area", sa.String(16), primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quota_locks")
    op.drop_index("uq_quotas_project_resource", table_name="quotas")
    op.drop_table("quotas")
