"""Block storage: volumes, attachments, services.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
        sa.Column("deleted_at", sa.DateTime),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    ]


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255)),
        sa.Column("description", sa.Text),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("multiattach", sa.Boolean, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("service_uuid", sa.String(36)),
        sa.Column("shared_targets", sa.Boolean, nullable=False),
        sa.Column("availability_zone", sa.String(255), nullable=False),
        sa.Column("chap_username", sa.String(255)),
        sa.Column("chap_password", sa.String(255)),
        *_timestamps(),
    )
    op.create_index("ix_volumes_project_deleted", "volumes", ["project_id", "deleted"])
    op.create_table(
        "volume_attachments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("volume_id", sa.String(36), sa.ForeignKey("volumes.id"), nullable=False),
        sa.Column("instance_uuid", sa.String(36)),
        sa.Column("attached_host", sa.String(255)),
        sa.Column("initiator", sa.String(255)),
        sa.Column("connector", sa.JSON),
        sa.Column("mountpoint", sa.String(255)),
        sa.Column("attach_status", sa.String(32), nullable=False),
        sa.Column("attach_mode", sa.String(4), nullable=False),
        sa.Column("attached_at", sa.DateTime),
        sa.Column("detached_at", sa.DateTime),
        *_timestamps(),
    )
    op.create_index("ix_attachments_volume_deleted", "volume_attachments",
                    ["volume_id", "deleted"])
    op.create_table(
        "services",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("binary", sa.String(64), nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("disabled", sa.Boolean, nullable=False),
        sa.Column("report_count", sa.Integer, nullable=False),
        sa.Column("last_seen_at", sa.DateTime),
        *_timestamps(),
    )
    op.create_index("ix_services_host_binary", "services", ["host", "binary"], unique=True)
