"""Images: the registry behind the image API and ``imageRef``.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("owner", sa.String(255)),
        sa.Column("visibility", sa.String(16), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("disk_format", sa.String(16)),
        sa.Column("container_format", sa.String(16)),
        sa.Column("size", sa.BigInteger),
        sa.Column("checksum", sa.String(64)),
        sa.Column("file", sa.String(255)),
        sa.Column("properties", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
        sa.Column("deleted_at", sa.DateTime),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_images_name_deleted", "images", ["name", "deleted"])
