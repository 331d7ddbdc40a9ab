"""Compute: instances, block device mappings, instance actions and events.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def _timestamps() -> list[sa.Column[object]]:
    return [
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime),
        sa.Column("deleted_at", sa.DateTime),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
    ]


def upgrade() -> None:
    op.create_table(
        "instances",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("host", sa.String(255)),
        sa.Column("flavor_id", sa.String(36), nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("memory_mb", sa.Integer, nullable=False),
        sa.Column("image_ref", sa.String(255)),
        sa.Column("vm_state", sa.String(32), nullable=False),
        sa.Column("task_state", sa.String(32)),
        sa.Column("power_state", sa.Integer, nullable=False),
        sa.Column("locked", sa.Boolean, nullable=False),
        sa.Column("locked_by", sa.String(16)),
        sa.Column("metadata", sa.JSON, nullable=False),
        *_timestamps(),
    )
    op.create_index("ix_instances_project_deleted", "instances", ["project_id", "deleted"])
    op.create_table(
        "block_device_mappings",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uuid", sa.String(36), nullable=False, unique=True),
        sa.Column("instance_uuid", sa.String(36), sa.ForeignKey("instances.uuid"),
                  nullable=False),
        sa.Column("volume_id", sa.String(36)),
        sa.Column("attachment_id", sa.String(36)),
        sa.Column("device_name", sa.String(255)),
        sa.Column("disk_bus", sa.String(16)),
        sa.Column("boot_index", sa.Integer),
        sa.Column("source_type", sa.String(16), nullable=False),
        sa.Column("destination_type", sa.String(16), nullable=False),
        sa.Column("connection_info", sa.JSON),
        sa.Column("tag", sa.String(255)),
        sa.Column("delete_on_termination", sa.Boolean, nullable=False),
        *_timestamps(),
    )
    op.create_index("ix_bdm_instance_deleted", "block_device_mappings",
                    ["instance_uuid", "deleted"])
    op.create_index("ix_bdm_volume_deleted", "block_device_mappings", ["volume_id", "deleted"])
    op.create_table(
        "instance_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(255), nullable=False),
        sa.Column("instance_uuid", sa.String(36), sa.ForeignKey("instances.uuid"),
                  nullable=False),
        sa.Column("action", sa.String(255), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("user_id", sa.String(255), nullable=False),
        sa.Column("start_time", sa.DateTime, nullable=False),
        sa.Column("finish_time", sa.DateTime),
        sa.Column("message", sa.String(255)),
        sa.Column("resource_id", sa.String(36)),
        sa.Column("updated_at", sa.DateTime),
    )
    op.create_index("ix_actions_instance_request", "instance_actions",
                    ["instance_uuid", "request_id"])
    op.create_table(
        "instance_action_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("action_id", sa.Integer, sa.ForeignKey("instance_actions.id"),
                  nullable=False),
        sa.Column("event", sa.String(255), nullable=False),
        sa.Column("start_time", sa.DateTime, nullable=False),
        sa.Column("finish_time", sa.DateTime),
        sa.Column("result", sa.String(255)),
        sa.Column("traceback", sa.Text),
        sa.Column("host", sa.String(255)),
        sa.Column("details", sa.Text),
    )
    op.create_index("ix_action_events_action", "instance_action_events", ["action_id"])
