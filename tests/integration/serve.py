"""``tether serve`` as its own process on free ports, on the real daemons
(the session's private tgtd, the host's libvirtd + QEMU), for tests that
talk to it only over HTTP -- as the OpenStack clients do.  Servers made
through :meth:`Serve.create_server`, then every volume, are deleted through
the API on stop, so no domain, export, libvirt secret or volume file
outlives the test module."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.harness import UNLIMITED_QUOTAS, wait_for
from tests.integration.daemons import Tgtd, free_port

TETHER = os.path.join(os.path.dirname(sys.executable), "tether")
# every quota unlimited: tests that are not about quotas create what they need
UNLIMITED_QUOTAS_INI = "\n".join(f"{name} = -1" for name in UNLIMITED_QUOTAS)


@dataclass
class Serve:
    compute_port: int
    volume_port: int
    image_port: int
    default_project: str
    initiator: str
    proc: subprocess.Popen[bytes] | None = None
    servers: list[str] = field(default_factory=list)
    state_dir: str = ""
    prefix: str = "tether-"  # of its libvirt domains and secrets
    auth_strategy: str = "noauth"
    identity_port: int = 0

    @property
    def identity_url(self) -> str:
        return f"http://127.0.0.1:{self.identity_port}/v3"

    def admin_password(self) -> str:
        with open(os.path.join(self.state_dir, "admin-password")) as f:
            return f.read().strip()

    def password_token(self, user: str, password: str, project: str) -> str:
        """A token of the local identity (``auth_strategy = local``)."""
        res = httpx.post(f"{self.identity_url}/auth/tokens", timeout=30, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}})
        assert res.status_code == 201, res.text
        return res.headers["X-Subject-Token"]

    def admin_token(self) -> str:
        """An administrator's token in this serve's auth strategy."""
        if self.auth_strategy == "noauth":
            return "admin:admin"
        return self.password_token("admin", self.admin_password(), "admin")

    @property
    def compute_url(self) -> str:
        return f"http://127.0.0.1:{self.compute_port}/v2.1"

    @property
    def volume_url(self) -> str:
        return f"http://127.0.0.1:{self.volume_port}/v3"

    @property
    def image_url(self) -> str:
        return f"http://127.0.0.1:{self.image_port}"

    def http(self, token: str) -> httpx.Client:
        return httpx.Client(timeout=30, headers={
            "X-Auth-Token": token, "OpenStack-API-Version": "volume 3.71, compute 2.96"})

    def volume(self, token: str, vid: str) -> dict[str, Any]:
        with self.http(token) as c:
            res = c.get(f"{self.volume_url}/volumes/{vid}")
            res.raise_for_status()
            vol: dict[str, Any] = res.json()["volume"]
            return vol

    def wait_volume(self, token: str, vid: str, status: str,
                    timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            vol = self.volume(token, vid)
            assert not vol["status"].startswith("error"), vol
            return vol if vol["status"] == status else None
        return dict(wait_for(check, timeout, f"volume {vid} {status}"))

    def create_server(self, token: str, name: str, timeout: float = 240) -> str:
        """A server, ACTIVE (``timeout``: a busy shared libvirtd can take a
        minute or more to start a guest)."""
        with self.http(token) as c:
            res = c.post(f"{self.compute_url}/servers",
                         json={"server": {"name": name, "flavorRef": "1"}})
            res.raise_for_status()
            sid: str = res.json()["server"]["id"]
            self.servers.append(sid)
            wait_for(lambda: c.get(f"{self.compute_url}/servers/{sid}").json()[
                "server"]["status"] == "ACTIVE", timeout, f"server {sid} ACTIVE")
        return sid

    def delete_servers(self, token: str) -> None:
        with self.http(token) as c:
            for sid in self.servers:
                c.delete(f"{self.compute_url}/servers/{sid}")
            for sid in self.servers:
                wait_for(lambda sid=sid: c.get(f"{self.compute_url}/servers/{sid}"
                                               ).status_code == 404, 60,
                         f"server {sid} deleted")
        self.servers.clear()

    def delete_volumes(self, admin_token: str) -> None:
        """Every volume still there, of every project."""
        with self.http(admin_token) as c:
            vids = [v["id"] for v in c.get(f"{self.volume_url}/volumes?all_tenants=1"
                                           ).json()["volumes"]]
            for vid in vids:
                c.delete(f"{self.volume_url}/volumes/{vid}").raise_for_status()
            for vid in vids:
                wait_for(lambda vid=vid: c.get(f"{self.volume_url}/volumes/{vid}"
                                               ).status_code == 404, 30,
                         f"volume {vid} deleted")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def write_config(state_dir: str, tgtd: Tgtd, extra: str = "",
                 auth_strategy: str = "noauth") -> Serve:
    """A ``tether.conf`` in ``state_dir`` for a serve on free ports, with its
    own host name, initiator and libvirt name prefix (so that ``tether
    audit`` never takes another run's guests on the same libvirtd for its
    own strays); ``extra``: more INI text for ``[compute]``."""
    tag = uuid.uuid4().hex[:8]
    serve = Serve(compute_port=free_port(), volume_port=free_port(), image_port=free_port(),
                  default_project=f"clients-{tag}",
                  initiator=f"iqn.2010-10.org.tether:clients-{tag}")
    serve.state_dir = state_dir
    serve.prefix = f"tether-{tag}-"
    serve.auth_strategy = auth_strategy
    serve.identity_port = free_port()
    with open(os.path.join(state_dir, "tether.conf"), "w") as f:
        f.write(f"""[DEFAULT]
host = clients-{tag}
transport_url = tether-inproc://clients-{tag}
[api]
auth_strategy = {auth_strategy}
identity_port = {serve.identity_port}
compute_port = {serve.compute_port}
volume_port = {serve.volume_port}
image_port = {serve.image_port}
default_project = {serve.default_project}
[quota]
{UNLIMITED_QUOTAS_INI}
[volume]
target_port = {tgtd.portal_port}
tgt_control_port = {tgtd.control_port}
[compute]
initiator_iqn = {serve.initiator}
domain_prefix = {serve.prefix}
device_detach_timeout = 5
device_detach_attempts = 2
{extra}""")
    return serve


def cli(serve: Serve, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``tether`` command on the serve's configuration and state."""
    return subprocess.run([TETHER, "--config-file", os.path.join(serve.state_dir, "tether.conf"),
                           "--state-dir", serve.state_dir, *args],
                          capture_output=True, text=True, timeout=120, check=False)


def start(serve: Serve, env: dict[str, str] | None = None) -> None:
    """Start ``tether serve`` (``env``: more environment, a fault point say)
    and wait until both APIs answer, or it exits."""
    out = os.path.join(serve.state_dir, "serve.out")
    with open(out, "ab") as log:
        proc = subprocess.Popen([TETHER, "--config-file",
                                 os.path.join(serve.state_dir, "tether.conf"),
                                 "--state-dir", serve.state_dir, "serve"],
                                stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
    serve.proc = proc
    wait_for(lambda: (_answers(serve.volume_url) and _answers(serve.compute_url)
                      and (serve.auth_strategy == "noauth" or _answers(serve.identity_url)))
             or proc.poll() is not None, 60, "tether serve up")
    if proc.poll() is not None:
        with open(out) as f:
            raise AssertionError(f"tether serve exited {proc.returncode}:\n{f.read()}")


def stop(serve: Serve) -> None:
    proc = serve.proc
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    serve.proc = None


@contextlib.contextmanager
def tether_serve(state_dir: str, tgtd: Tgtd, extra: str = "",
                 auth_strategy: str = "noauth") -> Iterator[Serve]:
    serve = write_config(state_dir, tgtd, extra, auth_strategy)
    start(serve)
    try:
        yield serve
    finally:
        try:
            admin = serve.admin_token()
            serve.delete_servers(admin)
            serve.delete_volumes(admin)
        finally:
            stop(serve)


def write_pattern(serve: Serve, vid: str, size: int = 1 << 20, offset: int = 0) -> str:
    """Random data into the volume's file (what a guest would have written
    before a fault); its sha256, for :func:`read_pattern` afterwards."""
    data = os.urandom(size)
    fd = os.open(volume_file(serve, vid), os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    return hashlib.sha256(data).hexdigest()


def read_pattern(serve: Serve, vid: str, size: int = 1 << 20, offset: int = 0) -> str:
    with open(volume_file(serve, vid), "rb") as f:
        f.seek(offset)
        return hashlib.sha256(f.read(size)).hexdigest()


def volume_file(serve: Serve, vid: str) -> str:
    return os.path.join(serve.state_dir, "volumes", f"volume-{vid}")
