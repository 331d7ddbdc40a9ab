"""Durable operations and atomic reservations.

* block device mappings: ``live_device`` / ``live_volume`` (NULL once the
  mapping is deleted) under unique indexes, so that one server can never hold
  one device name or one volume twice, whatever races; the ``connector`` its
  connection_info was made for; the ``shared_target`` lock of its backend.
* instance actions: ``status`` (api, queued, running, succeeded, failed),
  ``owner`` (the incarnation of the service working on it) and ``args``
  (what a recovery needs), so that every unfinished operation can be
  finished or undone after a crash.
* services: ``incarnation``, new at each start.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("services", sa.Column("incarnation", sa.String(36)))
    for column in (sa.Column("connector", sa.JSON), sa.Column("shared_target", sa.String(36)),
                   sa.Column("live_device", sa.String(255)),
                   sa.Column("live_volume", sa.String(36))):
        op.add_column("block_device_mappings", column)
    op.add_column("instance_actions", sa.Column("status", sa.String(16), nullable=False,
                                                server_default="succeeded"))
    op.add_column("instance_actions", sa.Column("owner", sa.String(36)))
    op.add_column("instance_actions", sa.Column("args", sa.JSON))
    _backfill()
    op.create_index("uq_bdm_live_device", "block_device_mappings",
                    ["instance_uuid", "live_device"], unique=True)
    op.create_index("uq_bdm_live_volume", "block_device_mappings",
                    ["instance_uuid", "live_volume"], unique=True)
    op.create_index("ix_actions_unfinished", "instance_actions", ["finish_time", "status"])


def _backfill() -> None:
    conn = op.get_bind()
    bdm = sa.table("block_device_mappings", sa.column("id", sa.Integer),
                   sa.column("instance_uuid", sa.String), sa.column("device_name", sa.String),
                   sa.column("volume_id", sa.String), sa.column("deleted", sa.Boolean),
                   sa.column("live_device", sa.String), sa.column("live_volume", sa.String))
    devices: set[tuple[str, str]] = set()
    volumes: set[tuple[str, str]] = set()
    rows = conn.execute(sa.select(bdm.c.id, bdm.c.instance_uuid, bdm.c.device_name,
                                  bdm.c.volume_id).where(bdm.c.deleted.is_(False))
                        .order_by(bdm.c.id)).all()
    for row in rows:  # a duplicate an earlier race made keeps no live key
        values = {}
        if row.device_name and (row.instance_uuid, row.device_name) not in devices:
            devices.add((row.instance_uuid, row.device_name))
            values["live_device"] = row.device_name
        if row.volume_id and (row.instance_uuid, row.volume_id) not in volumes:
            volumes.add((row.instance_uuid, row.volume_id))
            values["live_volume"] = row.volume_id
        if values:
            conn.execute(sa.update(bdm).where(bdm.c.id == row.id).values(values))
    actions = sa.table("instance_actions", sa.column("finish_time", sa.DateTime),
                       sa.column("message", sa.String), sa.column("status", sa.String))
    conn.execute(sa.update(actions).where(actions.c.finish_time.is_(None))
                 .values(status="running"))  # owner NULL: recovered at the next start
    conn.execute(sa.update(actions).where(actions.c.finish_time.is_not(None),
                                          actions.c.message.is_not(None))
                 .values(status="failed"))
