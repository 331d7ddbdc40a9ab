"""The distributed mode for tests: ``tether service api``, ``volume`` and
``compute`` as three processes over RabbitMQ and PostgreSQL (a database made
for the test and dropped after), with the real tgt and libvirt drivers,
driven over HTTP like any client.  Servers made through
:meth:`Cluster.server` are destroyed on libvirt at the end whatever happened."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.harness import wait_for
from tests.integration.daemons import ServerUnavailable, Tgtd, database_server, free_port
from tether.virt.libvirt.driver import LibvirtDriver
from tether.volume.secret_box import new_key

SERVICES = ("api", "volume", "compute")


@dataclass
class Cluster:
    http: httpx.Client
    nova: str
    cinder: str
    tmp: str
    conf: str
    servers: list[str] = field(default_factory=list)

    @property
    def tether(self) -> list[str]:
        return [os.path.join(os.path.dirname(sys.executable), "tether"), "--config-file",
                self.conf, "--state-dir", self.tmp]

    def created(self, url: str, body: dict[str, Any], key: str) -> str:
        """POST until the services' first heartbeats make it accepted (503 before)."""
        deadline = time.monotonic() + 60
        while True:
            res = self.http.post(url, json=body)
            if res.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert res.status_code == 202, res.text
        ident: str = res.json()[key]["id"]
        return ident

    def server(self) -> str:
        sid = self.created(f"{self.nova}/servers", {"server": {"name": "d", "flavorRef": "1"}},
                           "server")
        self.servers.append(sid)
        wait_for(lambda: self.http.get(f"{self.nova}/servers/{sid}").json()["server"][
            "status"] == "ACTIVE", 60, "server ACTIVE")
        return sid

    def volume(self) -> str:
        vid = self.created(f"{self.cinder}/volumes", {"volume": {"size": 1}}, "volume")
        self.wait_volume(vid, "available")
        return vid

    def status(self, vid: str) -> str:
        return str(self.http.get(f"{self.cinder}/volumes/{vid}").json()["volume"]["status"])

    def wait_volume(self, vid: str, status: str, timeout: float = 60) -> None:
        wait_for(lambda: self.status(vid) == status, timeout, f"volume {vid} {status}")

    def audit(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.tether, "audit"], capture_output=True, text=True,
                              timeout=120, check=False)


def _admin_token(state_dir: str, identity_port: int) -> str:
    with open(os.path.join(state_dir, "admin-password")) as f:
        password = f.read().strip()
    res = httpx.post(f"http://127.0.0.1:{identity_port}/v3/auth/tokens", timeout=30, json={
        "auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": "admin", "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})
    assert res.status_code == 201, res.text
    return res.headers["X-Subject-Token"]


@contextlib.contextmanager
def distributed(tmp_path: str, tgtd: Tgtd, extra: str = "",
                auth_strategy: str = "noauth") -> Iterator[Cluster]:
    """``extra``: more INI text for the shared tether.conf; ``auth_strategy``
    local: the API process serves the identity, the compute process gets
    its service token there, and the cluster's client is the admin."""
    try:  # (checked once per session: the reason at once, no wait per case)
        pg = database_server("postgresql")
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    name = f"tether_dist_{uuid.uuid4().hex[:10]}"
    # (pre-ping: a test may restart PostgreSQL under the pooled connection)
    admin = sa.create_engine(f"{pg}/postgres", isolation_level="AUTOCOMMIT",
                             pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    host = f"dist-{uuid.uuid4().hex[:6]}"
    compute_port, volume_port, image_port = free_port(), free_port(), free_port()
    identity_port = free_port()
    conf = os.path.join(tmp_path, "tether.conf")
    with open(conf, "w") as f:
        f.write(f"""[DEFAULT]
host = {host}
transport_url = rabbit://guest:guest@127.0.0.1:5672/
control_exchange = tether-{host}
[database]
connection = {pg}/{name}
[api]
auth_strategy = {auth_strategy}
identity_port = {identity_port}
compute_port = {compute_port}
volume_port = {volume_port}
image_port = {image_port}
service_token = dist-service-{uuid.uuid4().hex}
[volume]
target_port = {tgtd.portal_port}
tgt_control_port = {tgtd.control_port}
reconcile_interval = 0
secret_key = {new_key()}
[quota]
volumes = -1
gigabytes = -1
instances = -1
cores = -1
ram = -1
[compute]
initiator_iqn = iqn.2010-10.org.tether:{host}
domain_prefix = tether-{host}-
{extra}""")
    http = httpx.Client(timeout=30, headers={"X-Auth-Token": "alice:p1"})
    cluster = Cluster(http, f"http://127.0.0.1:{compute_port}/v2.1",
                      f"http://127.0.0.1:{volume_port}/v3", tmp_path, conf)
    subprocess.run([*cluster.tether, "db", "upgrade"], check=True, capture_output=True)
    logs = [open(os.path.join(tmp_path, f"{svc}.err"), "wb")  # noqa: SIM115
            for svc in SERVICES]
    procs = [subprocess.Popen([*cluster.tether, "service", svc], stdout=subprocess.DEVNULL,
                              stderr=log) for svc, log in zip(SERVICES, logs, strict=True)]
    try:
        def up() -> bool:
            try:
                urls = [cluster.nova, cluster.cinder]
                if auth_strategy == "local":
                    urls.append(f"http://127.0.0.1:{identity_port}/v3")
                return all(http.get(u).status_code == 200 for u in urls)
            except httpx.HTTPError:
                return False
        wait_for(up, 60, "tether service api")
        if auth_strategy == "local":
            http.headers["X-Auth-Token"] = _admin_token(tmp_path, identity_port)
        yield cluster
    finally:
        libvirt = LibvirtDriver(domain_prefix=f"tether-{host}-")  # this cluster's alone
        for sid in cluster.servers:
            libvirt.destroy(sid)
        for vid in libvirt.chap_secrets():  # of volumes still attached at the end
            libvirt.undefine_chap_secret(vid)
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        for log in logs:
            log.close()
        http.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
