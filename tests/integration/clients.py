"""The real OpenStack clients (``openstack``, openstacksdk, ``nova``,
``cinder``), installed unmodified from PyPI into ``.venv-clients`` by
``tools/client-venv.sh``, run as subprocesses against a ``tether serve``.

Each client gets a clean environment (no ``OS_*`` variable of the caller's)
and the ``clouds.yaml`` the README documents, with the test's ports."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from typing import Any

from tests.integration.serve import Serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.join(ROOT, ".venv-clients", "bin")


def ensure_client_venv() -> str:
    """Install the clients once (cached across runs); the venv's bin dir."""
    proc = subprocess.run([os.path.join(ROOT, "tools", "client-venv.sh")], check=False,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"tools/client-venv.sh failed:\n{proc.stdout}{proc.stderr}"
    return VENV_BIN


def clouds_yaml(serve: Serve, tokens: dict[str, str]) -> str:
    """The README's clouds.yaml for a Tether listening on ``serve``'s ports: cloud
    ``tether`` with ``auth_type: none``, ``tether-token`` with no auth (for
    ``--os-token``) and, per ``tokens`` item, a cloud of that name with
    ``auth_type: admin_token`` and that token."""
    common = f"""    compute_endpoint_override: {serve.compute_url}
    block_storage_endpoint_override: {serve.volume_url}
    identity_endpoint_override: http://127.0.0.1:{serve.compute_port}/identity/v3
    identity_api_version: "3"
    volume_api_version: "3"
    image_endpoint_override: {serve.image_url}
    has_network: false
"""
    text = f"""clouds:
  tether:
    auth_type: none
    auth:
      endpoint: {serve.compute_url}
{common}  tether-token:
{common}"""
    for name, token in tokens.items():
        text += f"""  {name}:
    auth_type: admin_token
    auth:
      endpoint: {serve.compute_url}
      token: "{token}"
{common}"""
    return text


def clouds_yaml_password(serve: Serve, accounts: dict[str, tuple[str, str, str]],
                         token_cloud: bool = False) -> str:
    """The README's clouds.yaml for the local identity (``auth_type: password``;
    every endpoint from the token's catalog): per ``accounts`` item, a cloud
    of that name for (user, password, project); ``token_cloud``: also
    ``tether-token``, without auth, for ``--os-token`` and ``--os-endpoint``."""
    text = "clouds:\n"
    if token_cloud:
        _, overrides_only = clouds_yaml(serve, {}).split("  tether-token:\n", 1)
        text += "  tether-token:\n" + overrides_only
    for name, (user, password, project) in accounts.items():
        text += f"""  {name}:
    auth_type: password
    auth:
      auth_url: {serve.identity_url}
      username: "{user}"
      password: "{password}"
      project_name: "{project}"
      user_domain_name: Default
      project_domain_name: Default
    region_name: RegionOne
    identity_api_version: "3"
    volume_api_version: "3"
    has_network: false
"""
    return text


@dataclass
class Clients:
    serve: Serve
    clouds_file: str

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env.update({"OS_CLIENT_CONFIG_FILE": self.clouds_file, "PYTHONWARNINGS": "ignore",
                    "PATH": VENV_BIN + os.pathsep + env.get("PATH", "")})
        env.update(extra)
        return env

    def run(self, argv: list[str], env: dict[str, str]) -> str:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=180,
                              check=False)
        assert proc.returncode == 0, (
            f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def openstack(self, *args: str, cloud: str = "tether",
                  token: str | None = None) -> Any:
        """``openstack --os-cloud CLOUD ARGS -f json``: the parsed output, if any.
        With ``token``: ``--os-token TOKEN --os-endpoint`` instead of the
        cloud's own auth (what OSC calls admin_token)."""
        argv = [os.path.join(VENV_BIN, "openstack"), "--os-cloud", cloud]
        if token is not None:
            argv = [os.path.join(VENV_BIN, "openstack"), "--os-cloud", "tether-token",
                    "--os-token", token, "--os-endpoint", self.serve.compute_url]
        out = self.run([*argv, *args], self.env())
        return json.loads(out) if out.strip() else None

    def nova(self, *args: str) -> str:
        """novaclient with ``--os-auth-type none`` (token "notused"): it still
        insists on a user, a project and an auth URL, none of which it uses."""
        return self.run([os.path.join(VENV_BIN, "nova"), "--os-auth-type", "none",
                         "--os-endpoint-override", self.serve.compute_url, *args],
                        self.env(OS_USERNAME="unused", OS_PROJECT_ID="unused",
                                 OS_AUTH_URL=f"http://127.0.0.1:{self.serve.compute_port}"
                                             "/identity/v3"))

    def nova_password(self, auth: list[str], *args: str) -> str:
        """novaclient with password auth at the serve's identity."""
        return self.run([os.path.join(VENV_BIN, "nova"), "--os-auth-url",
                         self.serve.identity_url, *auth, *args], self.env())

    def cinder_password(self, auth: list[str], *args: str) -> str:
        """cinderclient with password auth at the serve's identity."""
        return self.run([os.path.join(VENV_BIN, "cinder"), "--os-auth-url",
                         self.serve.identity_url, *auth, *args], self.env())

    def cinder(self, user: str, project: str, *args: str) -> str:
        """cinderclient's own noauth: it sends ``X-Auth-Token: user:project``."""
        return self.run([os.path.join(VENV_BIN, "cinder"), "--os-auth-type", "noauth",
                         "--os-endpoint", self.serve.volume_url, "--os-user-id", user,
                         "--os-project-id", project, *args], self.env())

    def sdk(self, script: str, *args: str, cloud: str = "tether") -> Any:
        """Run ``script`` with openstacksdk (the clients venv's Python); its
        stdout is JSON."""
        out = self.run([os.path.join(VENV_BIN, "python"), "-c", script, cloud, *args],
                       self.env())
        return json.loads(out)
