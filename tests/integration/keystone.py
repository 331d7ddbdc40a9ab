"""A real Keystone for the tests, from PyPI (``tools/keystone-venv.sh``,
``.venv-keystone``): SQLite database and fernet keys in a temp dir,
``keystone-manage db_sync``, ``fernet_setup``, ``credential_setup`` and
``bootstrap`` (admin in project admin; roles reader, member, admin, service),
then Keystone's public WSGI application in a small threaded server on a free
port (``keystone_server.py``).  :class:`Keystone` creates the projects, users
and role assignments a test needs through Keystone's own API, and
:meth:`Keystone.stop` / :meth:`Keystone.start` take it away and bring it back
(same database and keys, so earlier tokens stay valid)."""

from __future__ import annotations

import contextlib
import getpass
import grp
import os
import secrets
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.harness import wait_for
from tests.integration.daemons import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv-keystone", "bin")
SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "keystone_server.py")
ROLES = ("reader", "member", "admin", "service")


def ensure_keystone_venv() -> str:
    """Install Keystone once (cached across runs); the venv's bin dir."""
    proc = subprocess.run([os.path.join(ROOT, "tools", "keystone-venv.sh")], check=False,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"tools/keystone-venv.sh failed:\n{proc.stdout}{proc.stderr}"
    return VENV_BIN


@dataclass
class User:
    name: str
    password: str
    project: str
    id: str = ""
    project_id: str = ""


@dataclass
class Keystone:
    directory: str
    port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    proc: subprocess.Popen[bytes] | None = None
    role_ids: dict[str, str] = field(default_factory=dict)
    _admin_token: str = ""

    @property
    def url(self) -> str:
        """The Identity v3 endpoint."""
        return f"http://127.0.0.1:{self.port}/v3"

    @property
    def config_file(self) -> str:
        return os.path.join(self.directory, "keystone.conf")

    def _manage(self, *args: str) -> None:
        proc = subprocess.run([os.path.join(VENV_BIN, "keystone-manage"), "--config-file",
                               self.config_file, *args], capture_output=True, text=True,
                              timeout=300, check=False)
        assert proc.returncode == 0, f"keystone-manage {args[0]}:\n{proc.stdout}{proc.stderr}"

    def setup(self) -> None:
        d = self.directory
        with open(self.config_file, "w") as f:
            f.write(f"""[DEFAULT]
log_file = {d}/keystone.log
[database]
connection = sqlite:///{d}/keystone.db
[token]
provider = fernet
expiration = 3600
[fernet_tokens]
key_repository = {d}/fernet-keys
[fernet_receipts]
key_repository = {d}/fernet-receipts
[credential]
key_repository = {d}/credential-keys
[cache]
enabled = false
[identity]
# bcrypt's fewest rounds: test users, and each one costs a hash
password_hash_rounds = 4
""")
        user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
        # the key repositories do not need the database: made meanwhile
        with ThreadPoolExecutor(3) as pool:
            done = [pool.submit(self._manage, "db_sync"),
                    *(pool.submit(self._manage, what, "--keystone-user", user,
                                  "--keystone-group", group)
                      for what in ("fernet_setup", "credential_setup"))]
            for job in done:
                job.result()

    def bootstrap(self) -> None:
        """The admin user, project and role, roles member and reader (and
        service on recent Keystones), the identity endpoint."""
        # (one argument: a generated password may start with "-")
        self._manage("bootstrap", f"--bootstrap-password={self.admin_password}",
                     "--bootstrap-admin-url", self.url, "--bootstrap-public-url", self.url,
                     "--bootstrap-internal-url", self.url, "--bootstrap-region-id",
                     "RegionOne")

    def start(self) -> None:
        self.launch()
        self.wait_up()

    def launch(self) -> None:
        with open(os.path.join(self.directory, "server.out"), "ab") as log:
            self.proc = subprocess.Popen([os.path.join(VENV_BIN, "python"), SERVER,
                                          self.config_file, str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT)

    def wait_up(self) -> None:
        proc = self.proc
        assert proc is not None
        wait_for(lambda: self._answers() or proc.poll() is not None, 60, "keystone up")
        if proc.poll() is not None:
            with open(os.path.join(self.directory, "server.out")) as f:
                raise AssertionError(f"keystone exited {proc.returncode}:\n{f.read()}")

    def _answers(self) -> bool:
        try:
            return httpx.get(self.url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        self.proc = None

    # -- Keystone's API ----------------------------------------------------

    def token(self, name: str, password: str, project: str) -> str:
        """A project-scoped token (password auth, domain Default)."""
        res = httpx.post(f"{self.url}/auth/tokens", timeout=30, json={"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": name, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}})
        assert res.status_code == 201, res.text
        return res.headers["X-Subject-Token"]

    def admin_token(self) -> str:
        """The bootstrap admin's token (project admin), kept while it works."""
        if not (self._admin_token and httpx.get(
                f"{self.url}/auth/tokens", timeout=30, headers={
                    "X-Auth-Token": self._admin_token,
                    "X-Subject-Token": self._admin_token}).status_code == 200):
            self._admin_token = self.token("admin", self.admin_password, "admin")
        return self._admin_token

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30,
                            headers={"X-Auth-Token": self.admin_token()})

    def _role_id(self, c: httpx.Client, name: str) -> str:
        if name not in self.role_ids:
            found = c.get("/roles", params={"name": name}).json()["roles"]
            if found:
                self.role_ids[name] = found[0]["id"]
            else:
                res = c.post("/roles", json={"role": {"name": name}})
                assert res.status_code == 201, res.text
                self.role_ids[name] = res.json()["role"]["id"]
        return self.role_ids[name]

    def project(self, c: httpx.Client, name: str) -> str:
        found = c.get("/projects", params={"name": name}).json()["projects"]
        if found:
            return str(found[0]["id"])
        res = c.post("/projects", json={"project": {"name": name, "domain_id": "default"}})
        assert res.status_code == 201, res.text
        return str(res.json()["project"]["id"])

    def user(self, project: str, *roles: str, name: str | None = None,
             password: str | None = None) -> User:
        """A new user with ``roles`` on ``project`` (made if absent)."""
        user = User(name or f"u-{uuid.uuid4().hex[:8]}", password or secrets.token_urlsafe(12),
                    project)
        with self.admin() as c:
            user.project_id = self.project(c, project)
            res = c.post("/users", json={"user": {"name": user.name, "password": user.password,
                                                  "domain_id": "default"}})
            assert res.status_code == 201, res.text
            user.id = res.json()["user"]["id"]
            for role in roles:
                res = c.put(f"/projects/{user.project_id}/users/{user.id}/roles/"
                            f"{self._role_id(c, role)}")
                assert res.status_code == 204, res.text
        return user

    def user_token(self, user: User) -> str:
        return self.token(user.name, user.password, user.project)


@contextlib.contextmanager
def keystone(directory: str, meanwhile: Callable[[], object] = lambda: None,
             port: int | None = None) -> Iterator[Keystone]:
    """A running Keystone in ``directory`` (on ``port``, default a free one),
    stopped afterwards; ``meanwhile`` runs in another thread while Keystone is
    being set up (starting what needs no Keystone yet: it takes a while)."""
    ensure_keystone_venv()
    ks = Keystone(directory, port or free_port())
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(meanwhile)
        try:
            ks.setup()
            ks.launch()  # its imports take a while: bootstrapped meanwhile
            ks.bootstrap()
            ks.wait_up()
            with ks.admin() as c:
                for role in ROLES:
                    ks._role_id(c, role)
        except BaseException:
            ks.stop()
            raise
        finally:
            other.result()
    try:
        yield ks
    finally:
        ks.stop()


def service_config(ks: Keystone, service: User) -> str:
    """The ``tether.conf`` lines of auth_strategy = keystone, with ``service``
    (roles service and admin in its project) as both the token checker and
    the services' own user -- what docs/identity.md shows."""
    auth: dict[str, Any] = {
        "auth_url": ks.url, "username": service.name, "password": service.password,
        "project_name": service.project, "user_domain_name": "Default",
        "project_domain_name": "Default"}
    lines = ["[api]", "auth_strategy = keystone", "[keystone_authtoken]",
             f"www_authenticate_uri = {ks.url}", "auth_type = password",
             "http_request_max_retries = 0",
             *(f"{k} = {v}" for k, v in auth.items()), "[service_user]",
             *(f"{k} = {v}" for k, v in auth.items())]
    return "\n".join(lines) + "\n"
