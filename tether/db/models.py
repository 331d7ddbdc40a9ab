"""Persistence only: the tables, no behaviour.

Rows are soft-deleted (``deleted`` + ``deleted_at``), as OpenStack does, so an
operation's history (attachments, block device mappings) outlives it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON}


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Volume(TimestampMixin, Base):
    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))
    description: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(32))
    multiattach: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    host: Mapped[str | None] = mapped_column(String(255))
    service_uuid: Mapped[str | None] = mapped_column(String(36))
    shared_targets: Mapped[bool] = mapped_column(Boolean, default=False)
    availability_zone: Mapped[str] = mapped_column(String(255), default="nova")
    chap_username: Mapped[str | None] = mapped_column(String(255))
    chap_password: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (Index("ix_volumes_project_deleted", "project_id", "deleted"),)


class VolumeAttachment(TimestampMixin, Base):
    __tablename__ = "volume_attachments"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    volume_id: Mapped[str] = mapped_column(ForeignKey("volumes.id"))
    instance_uuid: Mapped[str | None] = mapped_column(String(36))
    attached_host: Mapped[str | None] = mapped_column(String(255))
    initiator: Mapped[str | None] = mapped_column(String(255))
    connector: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    mountpoint: Mapped[str | None] = mapped_column(String(255))
    attach_status: Mapped[str] = mapped_column(String(32))
    attach_mode: Mapped[str] = mapped_column(String(4), default="rw")
    attached_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    detached_at: Mapped[dt.datetime | None] = mapped_column(DateTime)

    __table_args__ = (Index("ix_attachments_volume_deleted", "volume_id", "deleted"),)


class Service(TimestampMixin, Base):
    """A running service (compute host, volume backend) and its heartbeat."""

    __tablename__ = "services"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    binary: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    report_count: Mapped[int] = mapped_column(Integer, default=0)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    # new at every start of the service's process: what an operation records
    # as its owner, so that one owned by an earlier incarnation is known dead
    incarnation: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (Index("ix_services_host_binary", "host", "binary", unique=True),)


class Instance(TimestampMixin, Base):
    """A server (a libvirt domain on its host)."""

    __tablename__ = "instances"

    uuid: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    host: Mapped[str | None] = mapped_column(String(255))
    flavor_id: Mapped[str] = mapped_column(String(36))
    vcpus: Mapped[int] = mapped_column(Integer)
    memory_mb: Mapped[int] = mapped_column(Integer)
    image_ref: Mapped[str | None] = mapped_column(String(255))
    vm_state: Mapped[str] = mapped_column(String(32))
    task_state: Mapped[str | None] = mapped_column(String(32))
    power_state: Mapped[int] = mapped_column(Integer, default=0)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    locked_by: Mapped[str | None] = mapped_column(String(16))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)

    __table_args__ = (Index("ix_instances_project_deleted", "project_id", "deleted"),)


class BlockDeviceMapping(TimestampMixin, Base):
    """A volume (or the root disk) as a server's block device."""

    __tablename__ = "block_device_mappings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid"))
    volume_id: Mapped[str | None] = mapped_column(String(36))
    attachment_id: Mapped[str | None] = mapped_column(String(36))
    device_name: Mapped[str | None] = mapped_column(String(255))
    disk_bus: Mapped[str | None] = mapped_column(String(16))
    boot_index: Mapped[int | None] = mapped_column(Integer)
    source_type: Mapped[str] = mapped_column(String(16))
    destination_type: Mapped[str] = mapped_column(String(16))
    connection_info: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    tag: Mapped[str | None] = mapped_column(String(255))
    delete_on_termination: Mapped[bool] = mapped_column(Boolean, default=False)
    # the connector this host gave storage for the connection_info above
    connector: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # the host-wide lock of the volume's backend when it shares targets
    shared_target: Mapped[str | None] = mapped_column(String(36))
    # a live mapping's device name and volume, NULL once deleted: the unique
    # indexes below then hold one live mapping per (server, device) and per
    # (server, volume) on every database (MariaDB has no partial indexes, and
    # NULLs never collide)
    live_device: Mapped[str | None] = mapped_column(String(255))
    live_volume: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (Index("ix_bdm_instance_deleted", "instance_uuid", "deleted"),
                      Index("ix_bdm_volume_deleted", "volume_id", "deleted"),
                      Index("uq_bdm_live_device", "instance_uuid", "live_device", unique=True),
                      Index("uq_bdm_live_volume", "instance_uuid", "live_volume", unique=True))


class InstanceAction(Base):
    """One user-visible operation on a server (attach_volume, detach_volume ...)."""

    __tablename__ = "instance_actions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(255))
    instance_uuid: Mapped[str] = mapped_column(ForeignKey("instances.uuid"))
    action: Mapped[str] = mapped_column(String(255))
    project_id: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(String(255))
    start_time: Mapped[dt.datetime] = mapped_column(DateTime)
    finish_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    message: Mapped[str | None] = mapped_column(String(255))
    # what the operation works on (a volume id), for resume/rollback after a crash
    resource_id: Mapped[str | None] = mapped_column(String(36))
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)
    # who may work on it (tether.states.operation): api, queued, running,
    # succeeded, failed; owner: the incarnation of the service working on it
    status: Mapped[str] = mapped_column(String(16), server_default="succeeded")
    owner: Mapped[str | None] = mapped_column(String(36))
    # what a recovery needs to finish or undo it (the RPC's arguments)
    args: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_actions_instance_request", "instance_uuid", "request_id"),
                      Index("ix_actions_unfinished", "finish_time", "status"))


class InstanceActionEvent(Base):
    """One step of an action (s1, s1.1, s1.1.1, s2 ...) with its timing and result."""

    __tablename__ = "instance_action_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action_id: Mapped[int] = mapped_column(ForeignKey("instance_actions.id"))
    event: Mapped[str] = mapped_column(String(255))
    start_time: Mapped[dt.datetime] = mapped_column(DateTime)
    finish_time: Mapped[dt.datetime | None] = mapped_column(DateTime)
    result: Mapped[str | None] = mapped_column(String(255))
    traceback: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_action_events_action", "action_id"),)


class Quota(Base):
    """A project's limit on one resource (``volumes``, ``instances`` ...),
    where it differs from the ``[quota]`` default.  Usage is never stored:
    it is counted from the rows it is made of (volumes, instances) when it
    is needed, so that it can never drift from them."""

    __tablename__ = "quotas"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(255))
    resource: Mapped[str] = mapped_column(String(64))
    hard_limit: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[dt.datetime | None] = mapped_column(DateTime, onupdate=utcnow)

    __table_args__ = (Index("uq_quotas_project_resource", "project_id", "resource",
                            unique=True),)


class QuotaLock(Base):
    """One row per (project, area): what a create locks (an UPDATE of it)
    before it counts the project's usage and inserts, so that two creates
    of one project are serialized on every database."""

    __tablename__ = "quota_locks"

    project_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    area: Mapped[str] = mapped_column(String(16), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)


class Image(TimestampMixin, Base):
    """An image servers boot from (Glance v2's shape). ``file`` names its
    data in the compute hosts' images directory; a machine image without a
    file of its own boots its ``kernel_id`` / ``ramdisk_id`` images directly."""

    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    owner: Mapped[str | None] = mapped_column(String(255))
    visibility: Mapped[str] = mapped_column(String(16), default="public")
    status: Mapped[str] = mapped_column(String(32))
    disk_format: Mapped[str | None] = mapped_column(String(16))
    container_format: Mapped[str | None] = mapped_column(String(16))
    size: Mapped[int | None] = mapped_column(BigInteger)
    checksum: Mapped[str | None] = mapped_column(String(64))  # sha256 of the data
    file: Mapped[str | None] = mapped_column(String(255))
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_images_name_deleted", "name", "deleted"),)


class IdentityProject(Base):
    """A project of the local identity (``[api] auth_strategy = local``): what
    resources belong to; its id is what volumes and servers record as
    ``project_id``.  ``revision`` grows when the project is disabled, so that
    the tokens scoped to it stop validating."""

    __tablename__ = "identity_projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class IdentityUser(Base):
    """A user of the local identity.  ``password_hash``: scrypt, never the
    password; ``revision`` grows at each password change or role removal,
    which revokes every token issued before (tokens carry the revision)."""

    __tablename__ = "identity_users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class IdentityRoleAssignment(Base):
    """Role ``role`` (reader, member, admin, service) of a user on a project."""

    __tablename__ = "identity_role_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("identity_users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("identity_projects.id"))
    role: Mapped[str] = mapped_column(String(64))

    __table_args__ = (Index("uq_identity_assignment", "user_id", "project_id", "role",
                            unique=True),
                      Index("ix_identity_assignment_project", "project_id"))


class IdentityAppCredential(Base):
    """An application credential: a secret (scrypt-hashed) that authenticates as
    its user on one project with a subset of the user's roles there."""

    __tablename__ = "identity_application_credentials"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    user_id: Mapped[str] = mapped_column(ForeignKey("identity_users.id"))
    project_id: Mapped[str] = mapped_column(ForeignKey("identity_projects.id"))
    secret_hash: Mapped[str] = mapped_column(String(255))
    roles: Mapped[list[str]] = mapped_column(JSON)
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("uq_identity_app_credential_name", "user_id", "name",
                            unique=True),)


class IdentityRevokedToken(Base):
    """A token revoked by ``DELETE /v3/auth/tokens``, until it would have
    expired anyway."""

    __tablename__ = "identity_revoked_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)

    __table_args__ = (Index("ix_identity_revoked_expires", "expires_at"),)
