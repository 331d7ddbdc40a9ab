"""Tether's configuration: one INI file (oslo.config), sane defaults for the
embedded mode so that ``tether serve`` runs with no file at all.

Distributed mode differs only in URLs: ``[database] connection`` names a
PostgreSQL or MariaDB server and ``[DEFAULT] transport_url`` a RabbitMQ broker.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from oslo_config import cfg
from oslo_policy import opts as policy_opts

DEFAULT_STATE_DIR = "/var/lib/tether"
DEFAULT_CONFIG_FILE = "/etc/tether/tether.conf"

default_opts = [
    cfg.StrOpt("state_dir", default=DEFAULT_STATE_DIR,
               help="Directory holding the SQLite database, volume files and logs."),
    cfg.StrOpt("host", default=socket.gethostname(),
               help="Name of this host as the services register it."),
    cfg.StrOpt("log_file", help="Log file; default <state_dir>/tether.log."),
    cfg.StrOpt("lock_path",
               help="Directory of host-wide lock files (shared iSCSI targets); every "
                    "Tether service on a host must use the same one. Default "
                    "<state_dir>/locks."),
    cfg.BoolOpt("debug", default=False, help="Log at DEBUG level."),
]

database_opts = [
    cfg.StrOpt("connection", secret=True,
               help="SQLAlchemy URL; default sqlite:///<state_dir>/tether.db."),
]

# [api] auth_strategy: one name per mode, in the order `tether config sample` lists them
AUTH_STRATEGIES = ["local", "keystone", "noauth"]

api_opts = [
    cfg.StrOpt("bind_host", default="127.0.0.1", help="Address the APIs listen on."),
    cfg.PortOpt("compute_port", default=8774, help="Compute API (Nova v2.1) port."),
    cfg.PortOpt("volume_port", default=8776, help="Block Storage API (Cinder v3) port."),
    cfg.PortOpt("image_port", default=9292, help="Image API (Glance v2, read-only) port."),
    cfg.StrOpt("auth_strategy", default="local", choices=AUTH_STRATEGIES,
               help="How tokens are checked. local: tokens issued by Tether's own "
                    "Identity v3 API (identity_port) for the users, projects and roles "
                    "in its database (docs/identity.md). keystone: by keystonemiddleware "
                    "against Keystone ([keystone_authtoken]; the services' own tokens "
                    "come from Keystone with [service_user]). noauth: X-Auth-Token is "
                    "'user:project' (refused unless bind_host is a loopback address)."),
    cfg.PortOpt("identity_port", default=5000,
                help="Identity v3 API port (auth_strategy = local)."),
    cfg.StrOpt("public_host",
               help="Host name the service catalog's URLs carry; default bind_host "
                    "(127.0.0.1 for a wildcard bind)."),
    cfg.StrOpt("admin_user", default="admin", help="noauth user that is an administrator."),
    cfg.StrOpt("service_token", secret=True,
               help="Token identifying Tether's own services (compute to block storage). "
                    "Default: generated once into <state_dir>/service_token."),
    cfg.StrOpt("default_project", default="demo",
               help="Project used for a noauth token without one (e.g. 'notused')."),
    cfg.IntOpt("threads", default=8, min=1, help="HTTP worker threads per API."),
    cfg.IntOpt("max_request_body_size", default=114688, min=1,
               help="Largest request body in bytes; larger ones are refused (413) before "
                    "they are read, chunked ones after limit + 1 bytes."),
    cfg.StrOpt("volume_endpoint",
               help="Block Storage API URL the compute service calls; default "
                    "http://<bind_host>:<volume_port>/v3."),
]

service_user_opts = [
    cfg.StrOpt("auth_url",
               help="Identity v3 endpoint the services get their tokens from (Keystone's, "
                    "or the local identity's); default the local identity of this "
                    "configuration."),
    cfg.StrOpt("username", default="tether", help="Service user's name."),
    cfg.StrOpt("password", secret=True,
               help="Service user's password; with auth_strategy = local, default: "
                    "generated at first start into <state_dir>/service_password "
                    "(0600); the services of other hosts need it configured here."),
    cfg.StrOpt("project_name", default="service", help="Service user's project."),
    cfg.StrOpt("user_domain_name", default="Default"),
    cfg.StrOpt("project_domain_name", default="Default"),
]

volume_opts = [
    cfg.StrOpt("backend_name", default="file", help="Name of this storage backend."),
    cfg.StrOpt("volumes_dir", help="Directory of volume files; default <state_dir>/volumes."),
    cfg.StrOpt("target_driver", default="tgt", choices=["tgt", "fake"],
               help="iSCSI target implementation."),
    cfg.StrOpt("target_ip", default="127.0.0.1", help="Portal address given to initiators."),
    cfg.PortOpt("target_port", default=3260, help="Portal port."),
    cfg.IntOpt("tgt_control_port", default=0, min=0,
               help="tgtd control port (tgtadm -C); 0 is the system tgtd."),
    cfg.StrOpt("tgt_admin", default="auto", choices=["auto", "socket", "tgtadm"],
               help="How requests reach tgtd: its management socket (what tgtadm itself "
                    "uses, without a process per request), the tgtadm command, or auto: "
                    "the socket when the installed tgt is 1.0.58 or newer and answers on "
                    "it, else tgtadm."),
    cfg.FloatOpt("reconcile_interval", default=10.0, min=0,
                 help="Seconds between checks that the target holds every export the "
                      "database wants (re-created after a tgtd restart, which drops every "
                      "guest's session with them; one read of tgtd and one query, only the "
                      "differences are changed) and that no volume was left creating, "
                      "deleting or contradicting its attachments; 0 turns it off."),
    cfg.BoolOpt("shared_targets", default=False,
                help="Report that this backend shares targets between volumes."),
    cfg.StrOpt("secret_key", secret=True,
               help="Keys that encrypt the volumes' CHAP secrets in the database "
                    "(Fernet keys, comma-separated: the first encrypts, every one "
                    "decrypts; see docs/security.md for rotation).  Every volume service "
                    "of a deployment needs the same.  Default: read from secret_key_file."),
    cfg.StrOpt("secret_key_file",
               help="File holding those keys (one a line, the first encrypts), when "
                    "secret_key is not set; default <state_dir>/secret.key, generated "
                    "0600 at the first start of a volume service on a database holding "
                    "no encrypted secret."),
]

quota_opts = [
    # Block Storage (Cinder's quota_* options)
    cfg.IntOpt("volumes", default=10, min=-1, help="Volumes per project (-1: unlimited)."),
    cfg.IntOpt("gigabytes", default=1000, min=-1,
               help="Total size of a project's volumes in GiB (-1: unlimited)."),
    cfg.IntOpt("snapshots", default=10, min=-1,
               help="Snapshots per project (Tether has none yet: shown, always 0 used)."),
    cfg.IntOpt("per_volume_gigabytes", default=-1, min=-1,
               help="Largest single volume in GiB (-1: unlimited)."),
    cfg.IntOpt("backups", default=10, min=-1, help="Backups per project (shown only)."),
    cfg.IntOpt("backup_gigabytes", default=1000, min=-1, help="Backup GiB (shown only)."),
    cfg.IntOpt("groups", default=10, min=-1, help="Volume groups (shown only)."),
    # Compute (Nova's [quota] options)
    cfg.IntOpt("instances", default=10, min=-1, help="Servers per project (-1: unlimited)."),
    cfg.IntOpt("cores", default=20, min=-1,
               help="vCPUs of a project's servers (-1: unlimited)."),
    cfg.IntOpt("ram", default=51200, min=-1,
               help="MiB of RAM of a project's servers (-1: unlimited)."),
    cfg.IntOpt("metadata_items", default=128, min=-1, help="Shown only."),
    cfg.IntOpt("key_pairs", default=100, min=-1, help="Shown only."),
    cfg.IntOpt("server_groups", default=10, min=-1, help="Shown only."),
    cfg.IntOpt("server_group_members", default=10, min=-1, help="Shown only."),
]

BLOCK_STORAGE_QUOTAS = ("volumes", "gigabytes", "snapshots", "per_volume_gigabytes",
                        "backups", "backup_gigabytes", "groups")
COMPUTE_QUOTAS = ("instances", "cores", "ram", "metadata_items", "key_pairs",
                  "server_groups", "server_group_members")

compute_opts = [
    cfg.StrOpt("virt_driver", default="libvirt", choices=["libvirt", "fake"]),
    cfg.StrOpt("libvirt_uri", default="qemu:///system"),
    cfg.StrOpt("domain_prefix", default="tether-",
               help="Prefix of what Tether names in libvirt: domain <prefix><server uuid>, "
                    "CHAP secret usage <prefix>volume-<volume id>.  `tether audit` counts "
                    "every such name as this deployment's: two deployments sharing one "
                    "libvirtd (tests) need different prefixes."),
    cfg.StrOpt("virt_type", default="auto", choices=["auto", "kvm", "qemu"],
               help="auto: KVM where it can run the guest, plain QEMU emulation otherwise."),
    cfg.StrOpt("disk_bus", default="scsi", choices=["scsi", "virtio"],
               help="Bus of attached volumes when the request names no device: scsi "
                    "(virtio-scsi, sdX) or virtio (virtio-blk, vdX)."),
    cfg.IntOpt("max_disk_devices_to_attach", default=-1, min=-1,
               help="Most disk devices one server may have (its image's root disk and "
                    "every volume, the boot volume included); an attach beyond it is "
                    "refused (403), as in Nova. -1: unlimited. Read by the API."),
    cfg.StrOpt("volume_connector", default="iscsi-direct", choices=["iscsi-direct", "iscsi"],
               help="How this host reaches iSCSI volumes. iscsi-direct: QEMU's own "
                    "initiator, the guest gets a network disk and the host sees nothing. "
                    "iscsi: the host's open-iscsi logs in (through os-brick) and the guest "
                    "gets the host block device; needs open-iscsi and the kernel's "
                    "iscsi_tcp module."),
    cfg.BoolOpt("volume_use_multipath", default=False,
                help="With volume_connector = iscsi: log in to every portal of a target "
                     "and give the guest the multipath device (needs multipathd)."),
    cfg.StrOpt("initiator_iqn",
               help="This host's initiator IQN for iscsi-direct; default from "
                    "/etc/iscsi/initiatorname.iscsi or generated once into "
                    "<state_dir>/initiator_iqn. The iscsi connector always presents "
                    "open-iscsi's name from /etc/iscsi/initiatorname.iscsi."),
    cfg.StrOpt("images_dir",
               help="Local images a server may boot from (imageRef names a file here); "
                    "default <state_dir>/images."),
    cfg.StrOpt("instances_dir",
               help="Per-server files (root disk overlay, console log); default "
                    "<state_dir>/instances.  QEMU's own user must be able to reach it."),
    cfg.FloatOpt("device_detach_timeout", default=20.0, min=0.1,
                 help="Seconds to wait for the guest to release a disk, per attempt."),
    cfg.IntOpt("device_detach_attempts", default=8, min=1,
               help="Live detach attempts before DeviceDetachFailed."),
    cfg.IntOpt("shelved_offload_time", default=0, min=-1,
                help="After a shelve: 0 offloads at once (guest and host connections "
                     "released), -1 never (until shelveOffload)."),
    cfg.FloatOpt("operation_timeout", default=600.0, min=1,
                 help="Seconds after which an attach or detach that no service is "
                      "working on (its message was lost, its host restarted) is resumed "
                      "or rolled back by the sweeper."),
    cfg.FloatOpt("sweep_interval", default=60.0, min=0,
                 help="Seconds between sweeps for such operations; 0 turns it off."),
    cfg.IntOpt("service_down_time", default=60, min=1,
               help="Seconds without a heartbeat after which a compute service is down."),
]


identity_opts = [
    cfg.IntOpt("token_expiration", default=3600, min=1,
               help="Seconds a token of the local identity is valid."),
    cfg.StrOpt("token_key_file",
               help="HMAC key that signs the local identity's tokens; default "
                    "<state_dir>/token.key, generated 0600 at first start.  Every API "
                    "process of a deployment needs the same key."),
    cfg.FloatOpt("revocation_check_interval", default=2.0, min=0,
                 help="Seconds a validated token's user, project and role state is "
                      "trusted before it is read again: how long a revocation (user or "
                      "role removed, password changed) made by another API process "
                      "may take to apply here.  Revocations in this process apply at "
                      "once."),
    cfg.IntOpt("scrypt_n", default=2 ** 14, min=2,
               help="scrypt CPU/memory cost of password and secret hashes (a power "
                    "of 2); applies to hashes made from now on."),
    cfg.IntOpt("scrypt_r", default=8, min=1, help="scrypt block size."),
    cfg.IntOpt("scrypt_p", default=1, min=1, help="scrypt parallelism."),
]


image_opts = [
    cfg.StrOpt("cache_dir",
               help="Downloaded packages and built files of `tether image build-tiny`; "
                    "default <state_dir>/cache (0700: QEMU reads the copies registered "
                    "in images_dir)."),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    from tether.messaging.transport import register_messaging_opts

    # oslo.messaging's own [DEFAULT] transport_url: tether-inproc:// (one
    # process) by default, rabbit://user:pass@host:5672/ when distributed
    register_messaging_opts(conf)
    conf.set_default("transport_url", "tether-inproc://")
    conf.register_opts(default_opts)
    conf.register_opts(database_opts, group="database")
    conf.register_opts(api_opts, group="api")
    conf.register_opts(service_user_opts, group="service_user")
    conf.register_opts(quota_opts, group="quota")
    conf.register_opts(volume_opts, group="volume")
    conf.register_opts(compute_opts, group="compute")
    conf.register_opts(image_opts, group="image")
    conf.register_opts(identity_opts, group="identity")
    # oslo.policy's own: policy_file (YAML or JSON; relative to the config
    # file's folder), policy_dirs, enforce_new_defaults
    for group, opts in policy_opts.list_opts():
        conf.register_opts(opts, group=group)


def load(
    config_file: str | None = None,
    state_dir: str | None = None,
    overrides: dict[str, dict[str, object]] | None = None,
) -> cfg.ConfigOpts:
    """Build a private ConfigOpts: file (if any), then ``state_dir``, then overrides.

    ``config_file`` None means the default path if it exists; a missing default
    file is fine (embedded defaults), a missing explicit file is an error.
    """
    conf = cfg.ConfigOpts()
    register_opts(conf)
    files: Sequence[str] = ()
    if config_file:
        if not os.path.exists(config_file):
            raise FileNotFoundError(f"configuration file {config_file} does not exist")
        files = (config_file,)
    elif os.path.exists(DEFAULT_CONFIG_FILE):
        files = (DEFAULT_CONFIG_FILE,)
    conf(args=[], project="tether", default_config_files=list(files),
         default_config_dirs=[], use_env=False)
    if state_dir:
        conf.set_override("state_dir", os.path.abspath(state_dir))
    for group, values in (overrides or {}).items():
        for name, value in values.items():
            conf.set_override(name, value, group=None if group == "DEFAULT" else group)
    return conf


def database_url(conf: cfg.ConfigOpts) -> str:
    url: str | None = conf.database.connection
    return url or f"sqlite:///{os.path.join(conf.state_dir, 'tether.db')}"


def volumes_dir(conf: cfg.ConfigOpts) -> str:
    path: str | None = conf.volume.volumes_dir
    return path or os.path.join(conf.state_dir, "volumes")


def secret_key_file(conf: cfg.ConfigOpts) -> str:
    path: str | None = conf.volume.secret_key_file
    return path or os.path.join(conf.state_dir, "secret.key")


def lock_dir(conf: cfg.ConfigOpts) -> str:
    """Host-wide lock files (shared iSCSI targets); shared by every service here."""
    path: str | None = conf.lock_path
    return path or os.path.join(conf.state_dir, "locks")


def images_dir(conf: cfg.ConfigOpts) -> str:
    path: str | None = conf.compute.images_dir
    return path or os.path.join(conf.state_dir, "images")


def instances_dir(conf: cfg.ConfigOpts) -> str:
    path: str | None = conf.compute.instances_dir
    return path or os.path.join(conf.state_dir, "instances")


def image_cache_dir(conf: cfg.ConfigOpts) -> str:
    path: str | None = conf.image.cache_dir
    return path or os.path.join(conf.state_dir, "cache")


def _local(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - a wildcard bind


def image_endpoint(conf: cfg.ConfigOpts) -> str:
    return f"http://{_local(conf.api.bind_host)}:{conf.api.image_port}"


def volume_endpoint(conf: cfg.ConfigOpts) -> str:
    url: str | None = conf.api.volume_endpoint
    if url:
        return url.rstrip("/")
    host = conf.api.bind_host
    if host in ("0.0.0.0", "::"):  # noqa: S104 - reaching a wildcard bind locally
        host = "127.0.0.1"
    return f"http://{host}:{conf.api.volume_port}/v3"


def compute_endpoint(conf: cfg.ConfigOpts) -> str:
    """The Compute API's URL (what block storage asks about servers)."""
    return f"http://{_local(conf.api.bind_host)}:{conf.api.compute_port}/v2.1"


def public_host(conf: cfg.ConfigOpts) -> str:
    """The host name in the service catalog's URLs."""
    host: str | None = conf.api.public_host
    return host or _local(conf.api.bind_host)


def identity_endpoint(conf: cfg.ConfigOpts) -> str:
    """The local identity's Identity v3 URL (its own, and the services' auth_url)."""
    return f"http://{public_host(conf)}:{conf.api.identity_port}/v3"


def token_key_file(conf: cfg.ConfigOpts) -> str:
    path: str | None = conf.identity.token_key_file
    return path or os.path.join(conf.state_dir, "token.key")


def list_opts() -> list[tuple[str | None, Sequence[cfg.Opt]]]:
    """For oslo-config-generator and `tether config sample`."""
    return [
        (None, default_opts),
        ("database", database_opts),
        ("api", api_opts),
        ("service_user", service_user_opts),
        ("quota", quota_opts),
        ("volume", volume_opts),
        ("compute", compute_opts),
        ("image", image_opts),
        ("identity", identity_opts),
        *policy_opts.list_opts(),
        # registered by keystonemiddleware itself when auth_strategy = keystone
        *authtoken_opts(),
    ]


def authtoken_opts() -> list[tuple[str, list[cfg.Opt]]]:
    """``[keystone_authtoken]`` (keystonemiddleware's options and its password
    auth plugin's)."""
    from tether.api.keystone import authtoken_opts

    return authtoken_opts()
