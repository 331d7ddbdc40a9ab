"""Process composition: which services run where.

``tether serve`` = APIs + volume service + compute service in one process
over ``tether-inproc://`` and SQLite; ``tether service api|volume|compute``
run the same objects in separate processes over RabbitMQ and
PostgreSQL/MariaDB.  Each service registers itself (a new incarnation per
start, ``tether.db.services``) and recovers, on start and periodically, what
a crash left to it (``tether.compute.recovery``, ``VolumeManager.reconcile``).
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from oslo_config import cfg

from tether import config, policy, statedir
from tether.api import block_storage, compute, http, identity_v3, image
from tether.api.auth import AuthConfigError, Authenticator, LocalAuth, NoAuth, check_bind
from tether.api.wsgi import WsgiApp
from tether.compute.api import COMPUTE_BINARY, ComputeAPI
from tether.compute.connections import HostConnections
from tether.compute.detach import DetachPolicy
from tether.compute.images import LocalImages
from tether.compute.locks import HostLocks
from tether.compute.manager import ComputeEndpoint, ComputeManager
from tether.compute.recovery import ApiRecovery, HostRecovery
from tether.compute.repository import ComputeRepository
from tether.compute.rpcapi import ComputeRpcApi
from tether.compute.volume_client import VolumeClient
from tether.connectors.base import VolumeConnector
from tether.connectors.initiator import host_initiator_iqn
from tether.connectors.iscsi_direct import IscsiDirectConnector
from tether.db import migrate, services
from tether.db.api import Database
from tether.db.records import ServiceRecord
from tether.exceptions import ServiceUnavailable
from tether.executor import ProcessRunner
from tether.identity import local
from tether.identity.credentials import PasswordToken, StaticToken, TokenSource
from tether.image.registry import ImageRegistry
from tether.notifications import Notifier
from tether.quota import BLOCK_STORAGE, COMPUTE, UNLIMITED, Locks, Quotas
from tether.restclient import HttpTransport, Transport, WsgiTransport
from tether.rpc import COMPUTE_TOPIC, VOLUME_TOPIC, Rpc
from tether.virt.driver import VirtDriver
from tether.volume import secret_box
from tether.volume.api import VolumeAPI
from tether.volume.backends.file import FileBackend
from tether.volume.compute_client import ComputeClient
from tether.volume.manager import VolumeManager
from tether.volume.repository import DEFAULT_TYPE, VolumeRepository
from tether.volume.rpcapi import VolumeEndpoint, VolumeRpcApi
from tether.volume.targets.base import TargetDriver

LOG = logging.getLogger(__name__)
VOLUME_BINARY = "tether-volume"
API_BINARY = "tether-api"
REPORT_INTERVAL = 10.0


def service_token(conf: cfg.ConfigOpts) -> str:
    """The configured service token, or one generated once into the state dir
    (0600; two processes starting at once agree on one)."""
    token: str | None = conf.api.service_token
    if token:
        return token
    path = os.path.join(statedir.directory(conf.state_dir, statedir.state_dir_mode(conf)),
                        "service_token")
    return statedir.read_or_create(path, secrets.token_urlsafe(32) + "\n").strip()


def authenticator(conf: cfg.ConfigOpts,
                  identity: local.LocalIdentity | None = None) -> Authenticator:
    """The API's authenticator for ``[api] auth_strategy`` (``identity``: the
    local identity, for ``local``)."""
    strategy = conf.api.auth_strategy
    check_bind(strategy, conf.api.bind_host)
    if strategy == "local":
        if identity is None:
            raise ValueError("auth_strategy = local needs the local identity")
        return LocalAuth(identity.tokens)
    if strategy == "keystone":
        # imported here: keystonemiddleware (WebOb, keystoneauth1, oslo.cache)
        # loads only where it is used
        from tether.api.keystone import KeystoneAuth

        return KeystoneAuth(conf)
    return NoAuth(conf.api.admin_user, service_token(conf), conf.api.default_project)


def service_credentials(conf: cfg.ConfigOpts) -> TokenSource:
    """The token this process's services send to the other side's API: the
    ``[service_user]``'s from the identity (local: this deployment's own,
    password from the state dir unless configured; keystone: from Keystone,
    password auth, kept until shortly before it expires), or noauth's
    service token."""
    if conf.api.auth_strategy == "local":
        su = conf.service_user
        return PasswordToken(su.auth_url or config.identity_endpoint(conf), su.username,
                             local.service_password(conf), su.project_name,
                             su.user_domain_name, su.project_domain_name)
    if conf.api.auth_strategy == "keystone":
        user = conf.service_user
        if not (user.auth_url and user.password):
            raise AuthConfigError("[api] auth_strategy = keystone needs [service_user] "
                                  "auth_url and password: the Keystone user Tether's "
                                  "services authenticate as (with the service role).")
        return PasswordToken(user.auth_url, user.username, user.password, user.project_name,
                             user.user_domain_name, user.project_domain_name)
    return StaticToken(service_token(conf))


def open_database(conf: cfg.ConfigOpts, upgrade: bool) -> Database:
    # the state dir 0711 or 0700 and its private files tightened; a SQLite
    # database made 0600 before SQLite writes it or its WAL (statedir)
    statedir.state_dir(conf)
    url = config.database_url(conf)
    statedir.database_files(url)
    db = Database(url)
    if upgrade:
        migrate.upgrade(db)
    elif migrate.current(db) != migrate.head():
        raise RuntimeError(f"database {db.engine.url!r} is not at the current schema: run "
                           "`tether db upgrade`")
    return db


class Periodic:
    """Runs ``task`` every ``interval`` seconds in a daemon thread until stopped;
    a failing run is logged and the next one happens as planned."""

    def __init__(self, name: str, interval: float, task: Callable[[], object]) -> None:
        self.name, self.interval, self.task = name, interval, task
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.task()
                except Exception:
                    LOG.exception("periodic task %s failed", self.name)

        self._thread = threading.Thread(target=loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Heartbeat:
    """Registers this process's service row (a new incarnation) and keeps its
    ``last_seen_at`` fresh."""

    def __init__(self, db: Database, host: str, binary: str, topic: str,
                 interval: float = REPORT_INTERVAL) -> None:
        self.db, self.host, self.binary, self.topic = db, host, binary, topic
        row = services.register(db, host, binary, topic)
        self.uuid = row.uuid
        self.incarnation: str = row.incarnation or ""
        self._periodic = Periodic(f"heartbeat-{binary}", interval, self.beat)

    def beat(self) -> None:
        services.beat(self.db, self.uuid)

    def start(self) -> None:
        self._periodic.start()

    def stop(self) -> None:
        self._periodic.stop()


def live_services(db: Database, binary: str, down_after: float) -> list[ServiceRecord]:
    """Services of ``binary`` with a heartbeat in the last ``down_after`` seconds."""
    return services.live(db, binary, down_after)


def volume_host_picker(repo: VolumeRepository, down_after: float) -> Any:
    """The scheduler, for now: the live volume service with the fewest volumes."""

    def pick() -> tuple[str, str]:
        live = live_services(repo.db, VOLUME_BINARY, down_after)
        if not live:
            raise ServiceUnavailable("No volume service is up to create the volume on; start "
                                     "`tether volume` (or `tether serve`).")
        with repo.begin() as c:
            counts = repo.volume_counts(c)
        best = min(live, key=lambda sv: (counts.get(sv.host, 0), sv.host))
        return best.host, best.uuid

    return pick


def make_target(conf: cfg.ConfigOpts) -> TargetDriver:
    if conf.volume.target_driver == "fake":
        from tether.volume.targets.fake import FakeTarget

        return FakeTarget(portal_ip=conf.volume.target_ip, portal_port=conf.volume.target_port)
    from tether.volume.targets.tgt import TgtTarget
    from tether.volume.targets.tgtadm import make_admin

    runner = ProcessRunner()
    return TgtTarget(runner, portal_ip=conf.volume.target_ip,
                     portal_port=conf.volume.target_port,
                     control_port=conf.volume.tgt_control_port,
                     admin=make_admin(conf.volume.tgt_admin, runner,
                                      conf.volume.tgt_control_port))


class VolumeService:
    """The storage host: volume manager behind the ``tether-volume`` topic."""

    def __init__(self, conf: cfg.ConfigOpts, db: Database, rpc: Rpc,
                 target: TargetDriver | None = None) -> None:
        self.conf = conf
        self.host = f"{conf.host}@{conf.volume.backend_name}"
        self.target = target if target is not None else make_target(conf)
        repo = VolumeRepository(db)
        # the key first: a missing or wrong one stops the service here, and
        # secrets an older Tether kept in clear are sealed before any is used
        box = secret_box.prepare(conf, repo)
        self.manager = VolumeManager(repo, FileBackend(config.volumes_dir(conf)),
                                     self.target, self.host, box,
                                     stale_after=conf.compute.operation_timeout)
        self.rpc = rpc
        self.heartbeat = Heartbeat(db, self.host, VOLUME_BINARY, VOLUME_TOPIC)
        # heals what a tgtd restart takes away while this service keeps running,
        # and finishes what a lost message or a crashed request left
        self.reconciler = Periodic("volume-reconcile", conf.volume.reconcile_interval,
                                   self.manager.reconcile)

    def start(self) -> None:
        self.manager.reconcile(at_start=True)
        self.rpc.serve(VOLUME_TOPIC, self.host, [VolumeEndpoint(self.manager)])
        self.heartbeat.start()
        if self.conf.volume.reconcile_interval > 0:
            self.reconciler.start()
        LOG.info("volume service %s up (service uuid %s)", self.host, self.heartbeat.uuid)

    def stop(self) -> None:
        self.reconciler.stop()
        self.heartbeat.stop()


@dataclass(frozen=True)
class Drivers:
    """Drivers to use instead of the configured ones (tests, demos)."""

    target: TargetDriver | None = None
    virt: VirtDriver | None = None
    connector: VolumeConnector | None = None


@dataclass
class HttpServer:
    name: str
    server: Any
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.effective_port)

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listener and every connection from inside the server's
        own loop (closing them from another thread races with its poll and
        can raise there), then stop the worker threads."""

        def close_all() -> None:
            for channel in list(self.server._map.values()):
                channel.close()

        self.server.trigger.pull_trigger(close_all)
        self.thread.join(timeout=timeout)
        self.server.task_dispatcher.shutdown()


def serve_http(name: str, app: WsgiApp, host: str, port: int, threads: int,
               max_body: int) -> HttpServer:
    server = http.create(app, host, port, threads, max_body)
    thread = threading.Thread(target=server.run, name=f"http-{name}", daemon=True)
    thread.start()
    LOG.info("%s API listening on http://%s:%s", name, host, server.effective_port)
    return HttpServer(name, server, thread)


def make_virt(conf: cfg.ConfigOpts) -> VirtDriver:
    if conf.compute.virt_driver == "fake":
        from tether.virt.fake import FakeDriver

        return FakeDriver()
    from tether.virt.libvirt.driver import LibvirtDriver

    return LibvirtDriver(uri=conf.compute.libvirt_uri, virt_type=conf.compute.virt_type,
                         domain_prefix=conf.compute.domain_prefix)


def make_connector(conf: cfg.ConfigOpts, virt: VirtDriver) -> VolumeConnector:
    if conf.compute.volume_connector == "iscsi":
        # imported here: os-brick (and its privsep and tenacity) loads only on
        # the hosts that log in themselves
        from tether.connectors.iscsi import IscsiConnector, setup_os_brick

        setup_os_brick(config.lock_dir(conf))
        return IscsiConnector(conf.host, conf.volume.target_ip,
                              multipath=conf.compute.volume_use_multipath)
    iqn = host_initiator_iqn(conf.compute.initiator_iqn, conf.state_dir, conf.host)
    return IscsiDirectConnector(virt, iqn, conf.host, conf.volume.target_ip)


class ComputeService:
    """The hypervisor host: compute manager behind the ``tether-compute`` topic."""

    def __init__(self, conf: cfg.ConfigOpts, db: Database, rpc: Rpc,
                 drivers: Drivers = Drivers(),
                 volume_transport: Transport | None = None) -> None:
        self.conf = conf
        self.virt = drivers.virt if drivers.virt is not None else make_virt(conf)
        self.connector = (drivers.connector if drivers.connector is not None
                          else make_connector(conf, self.virt))
        self.volumes = VolumeClient(
            volume_transport or HttpTransport(config.volume_endpoint(conf), timeout=60.0),
            service_credentials(conf))
        policy = DetachPolicy(conf.compute.device_detach_timeout,
                              conf.compute.device_detach_attempts)
        images = LocalImages(config.images_dir(conf), config.instances_dir(conf),
                             ProcessRunner(), ImageRegistry(db, config.images_dir(conf)))
        self.notifier = Notifier(conf, f"compute.{conf.host}")
        repo = ComputeRepository(db, self.notifier.emit)
        connections = HostConnections(repo, self.connector, conf.host,
                                      HostLocks(config.lock_dir(conf)))
        self.manager = ComputeManager(repo, self.virt, connections, self.volumes, conf.host,
                                      policy, images, conf.compute.shelved_offload_time,
                                      domain_prefix=conf.compute.domain_prefix)
        self.rpc = rpc
        self.heartbeat = Heartbeat(db, conf.host, COMPUTE_BINARY, COMPUTE_TOPIC)
        self.manager.ops.owner = self.heartbeat.incarnation
        self.recovery = HostRecovery(db, self.manager, conf.compute.service_down_time,
                                     conf.compute.operation_timeout)
        self.sweeper = Periodic("operation-sweeper", conf.compute.sweep_interval,
                                self.recovery.run)

    def start(self) -> None:
        self.rpc.serve(COMPUTE_TOPIC, self.conf.host, [ComputeEndpoint(self.manager)])
        self.heartbeat.start()
        self.manager.prune_instance_files()
        recovered = self.recovery.run(at_start=True)
        if self.conf.compute.sweep_interval > 0:
            self.sweeper.start()
        LOG.info("compute service %s up (%d interrupted operation(s) recovered)",
                 self.conf.host, recovered)

    def stop(self) -> None:
        self.sweeper.stop()
        self.heartbeat.stop()
        self.volumes.close()
        self.notifier.close()


def volume_quota_defaults(conf: cfg.ConfigOpts) -> dict[str, int]:
    """Cinder's quota resources with ``[quota]``'s defaults, then the one
    volume type's own (unlimited, as Cinder's per-type quotas default)."""
    out = {name: int(getattr(conf.quota, name)) for name in config.BLOCK_STORAGE_QUOTAS}
    for name in ("volumes", "gigabytes", "snapshots"):
        out[f"{name}_{DEFAULT_TYPE}"] = UNLIMITED
    return out


def compute_quota_defaults(conf: cfg.ConfigOpts) -> dict[str, int]:
    return {name: int(getattr(conf.quota, name)) for name in config.COMPUTE_QUOTAS}


class ApiService:
    """Both APIs (and the image API) of one process.  Each API reaches the
    other side only through that side's REST API, here in process."""

    def __init__(self, conf: cfg.ConfigOpts, db: Database, rpc: Rpc,
                 volume_in_process: bool = False) -> None:
        self.conf = conf
        down = conf.compute.service_down_time
        policy.init(conf)  # this process's enforcer: [oslo_policy] and its policy file
        # the local identity: its accounts made at first start, its own API
        self.identity: local.LocalIdentity | None = None
        self.identity_app: WsgiApp | None = None
        if conf.api.auth_strategy == "local":
            self.identity = local.make(conf, db)
            local.bootstrap(conf, self.identity.store)
            self.identity_app = identity_v3.create_app(
                self.identity, identity_v3.catalog_services(conf),
                conf.api.max_request_body_size)
        auth = authenticator(conf, self.identity)
        token = service_credentials(conf)
        volumes = VolumeRepository(db)
        # (the compute app is made below: block storage reaches it once running)
        computes = ComputeClient(WsgiTransport(self._call_compute, config.compute_endpoint(
            conf)), token)
        locks = Locks(db)
        self.volume_api = VolumeAPI(volumes, VolumeRpcApi(rpc),
                                    volume_host_picker(volumes, down),
                                    Quotas(db, locks, BLOCK_STORAGE,
                                           volume_quota_defaults(conf), volumes.usage),
                                    in_use=computes.server_uses_volume,
                                    shared_targets=conf.volume.shared_targets)
        limit = conf.api.max_request_body_size
        self.volume_app = auth.wrap(block_storage.create_app(self.volume_api, auth, limit))
        endpoint = config.volume_endpoint(conf)
        self.volume_transport: Transport = (
            WsgiTransport(self.volume_app, endpoint) if volume_in_process
            else HttpTransport(endpoint, timeout=60.0))
        self.volume_client = VolumeClient(self.volume_transport, token)
        self.images = ImageRegistry(db, config.images_dir(conf))
        servers = ComputeRepository(db)
        self.compute_api = ComputeAPI(
            servers, ComputeRpcApi(rpc), self.volume_client,
            lambda: [sv.host for sv in live_services(db, COMPUTE_BINARY, down)],
            Quotas(db, locks, COMPUTE, compute_quota_defaults(conf), servers.usage),
            default_bus=conf.compute.disk_bus, images=self.images,
            max_disk_devices=conf.compute.max_disk_devices_to_attach)
        self.compute_app = auth.wrap(compute.create_app(self.compute_api, auth, limit))
        self.image_app = auth.wrap(image.create_app(self.images, auth, limit))
        self.heartbeat = Heartbeat(db, conf.host, API_BINARY, "api")
        self.compute_api.ops.owner = self.heartbeat.incarnation
        self.recovery = ApiRecovery(db, self.compute_api, down,
                                    conf.compute.operation_timeout)
        self.sweeper = Periodic("api-sweeper", conf.compute.sweep_interval, self.recovery.run)
        self.servers: list[HttpServer] = []

    def _call_compute(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.compute_app(environ, start_response)

    def start(self) -> None:
        self.heartbeat.start()
        self.recovery.run()
        if self.conf.compute.sweep_interval > 0:
            self.sweeper.start()
        api = self.conf.api
        limit = api.max_request_body_size
        self.servers.append(serve_http("block-storage", self.volume_app, api.bind_host,
                                       api.volume_port, api.threads, limit))
        self.servers.append(serve_http("compute", self.compute_app, api.bind_host,
                                       api.compute_port, api.threads, limit))
        self.servers.append(serve_http("image", self.image_app, api.bind_host,
                                       api.image_port, api.threads, limit))
        if self.identity_app is not None:
            self.servers.append(serve_http("identity", self.identity_app, api.bind_host,
                                           api.identity_port, api.threads, limit))

    def stop(self) -> None:
        for srv in self.servers:
            srv.stop()
        self.servers.clear()
        self.sweeper.stop()
        self.heartbeat.stop()
        self.volume_client.close()


class Embedded:
    """``tether serve``: everything in one process.  Compute still reaches block
    storage only through the Block Storage REST API, but calls its WSGI app in
    process instead of over a socket to itself."""

    def __init__(self, conf: cfg.ConfigOpts, drivers: Drivers = Drivers()) -> None:
        self.conf = conf
        self.db = open_database(conf, upgrade=True)
        self.rpc = Rpc(conf)
        self.volume = VolumeService(conf, self.db, self.rpc, drivers.target)
        self.api = ApiService(conf, self.db, self.rpc, volume_in_process=True)
        self.compute = ComputeService(conf, self.db, self.rpc, drivers,
                                      self.api.volume_transport)

    def start(self) -> None:
        self.volume.start()
        self.api.start()
        self.compute.start()

    def stop(self) -> None:
        self.compute.stop()
        self.api.stop()
        self.volume.stop()
        self.rpc.stop()
        self.db.dispose()
