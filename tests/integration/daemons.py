"""Private daemons for integration tests: each test session runs its own
tgtd on free ports (its own control socket), so parallel runs and the host's
own tgtd never see each other's targets."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _control_port_free(port: int) -> bool:
    return not os.path.exists(f"/var/run/tgtd/socket.{port}")


def wait_until(check: object, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout}s")
        time.sleep(0.02)


@dataclass
class Tgtd:
    """A tgtd of our own: ``portal_port`` for initiators, ``control_port`` for tgtadm."""

    portal_port: int = field(default_factory=free_port)
    control_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.control_port:  # tgtadm -C takes 1..32767
            port = 10000 + self.portal_port % 20000
            while not _control_port_free(port):
                port += 1
            self.control_port = port

    def _answers(self) -> bool:
        return subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi",
                               "--op", "show", "--mode", "sys"], capture_output=True,
                              check=False).returncode == 0

    def start(self) -> Tgtd:
        self.proc = subprocess.Popen(
            ["tgtd", "-f", "-C", str(self.control_port), "--iscsi",
             f"portal=127.0.0.1:{self.portal_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, f"tgtd on control port {self.control_port}")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        wait_until(lambda: not self._answers(), "tgtd shutdown")
        for leftover in (f"/var/run/tgtd/socket.{self.control_port}",
                         f"/var/run/tgtd/socket.{self.control_port}.lock"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(leftover)

    def restart(self) -> None:
        """What an operator's `systemctl restart tgt` does: every target is lost."""
        self.stop()
        self.start()

    def show(self) -> str:
        return subprocess.run(["tgtadm", "-C", str(self.control_port), "--lld", "iscsi",
                               "--op", "show", "--mode", "target"], capture_output=True,
                              text=True, check=True).stdout


def iscsi_inq(initiator: str, portal: str, iqn: str, user: str | None = None,
              password: str | None = None, lun: int = 1) -> tuple[bool, str]:
    """An INQUIRY through libiscsi as ``initiator``: (admitted, what it said)."""
    auth = f"{user}%{password}@" if user else ""
    proc = subprocess.run(["iscsi-inq", "-i", initiator, f"iscsi://{auth}{portal}/{iqn}/{lun}"],
                          capture_output=True, text=True, timeout=30, check=False)
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()


def _tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# where the tests log in: written by tools/services.sh (tools/bootstrap.sh);
# without it, what this kind of machine comes with (trust on 127.0.0.1)
DATABASES_FILE = os.environ.get("TETHER_TEST_DATABASES", "/etc/tether/test-databases.json")
DEFAULT_SERVERS = {
    "postgresql": "postgresql+psycopg2://postgres@127.0.0.1:5432",
    "mariadb": "mysql+pymysql://root@127.0.0.1:3306",
}
PORTS = {"postgresql": 5432, "mariadb": 3306}
SERVICES_SH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tools", "services.sh")


class ServerUnavailable(Exception):
    """A server the tests need cannot be reached (the message says why)."""


def database_servers() -> dict[str, str]:
    """The URL (no database) of each server, from DATABASES_FILE when it exists."""
    try:
        with open(DATABASES_FILE) as f:
            found = json.load(f)
    except FileNotFoundError:
        return dict(DEFAULT_SERVERS)
    return {kind: str(found.get(kind, url)) for kind, url in DEFAULT_SERVERS.items()}


def _start_services() -> str | None:
    """tools/services.sh (starts what is not running); None, or why it failed."""
    try:
        proc = subprocess.run([SERVICES_SH], capture_output=True, text=True, timeout=180,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{SERVICES_SH}: {exc}"
    if proc.returncode != 0:
        return f"{SERVICES_SH} failed: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return None


def _reachable(url: str, admin_db: str) -> str | None:
    """None when ``url`` accepts a login (no retries), else why not."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"{url}/{admin_db}",
                              connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return None
    except sa.exc.DBAPIError as exc:
        return str(exc.orig).strip().splitlines()[0]
    finally:
        engine.dispose()


ADMIN_DB = {"postgresql": "postgres", "mariadb": ""}
_CHECKED: dict[str, str | ServerUnavailable] = {}


def database_server(kind: str) -> str:
    """The URL of the ``kind`` server, started by tools/services.sh if it is
    not listening.  Checked once per session: a server that cannot be reached
    raises :class:`ServerUnavailable` at once for every later caller too."""
    if kind not in _CHECKED:
        try:
            _CHECKED[kind] = _check_database_server(kind)
        except ServerUnavailable as exc:
            _CHECKED[kind] = exc
    found = _CHECKED[kind]
    if isinstance(found, ServerUnavailable):
        raise ServerUnavailable(str(found))
    return found


def _check_database_server(kind: str) -> str:
    url = database_servers()[kind]
    port = PORTS[kind]
    if not _tcp_open(port):
        why = _start_services()
        if not _tcp_open(port):
            raise ServerUnavailable(f"{kind} is not listening on 127.0.0.1:{port}"
                                    + (f" ({why})" if why else ""))
    why = _reachable(url, ADMIN_DB[kind])
    if why is not None:
        shown = re.sub(r":[^:@/]*@", ":***@", url)
        raise ServerUnavailable(f"{kind} at {shown} refuses the tests' login ({why}); "
                                f"tools/services.sh writes the login to {DATABASES_FILE}")
    return url


RABBIT = "rabbit://guest:guest@127.0.0.1:5672/"


def rabbit_answers() -> str | None:
    """None once RabbitMQ accepts an AMQP login, else why not."""
    import kombu

    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            pass
        with kombu.Connection("amqp://guest:guest@127.0.0.1:5672//",  # type: ignore[no-untyped-call]
                              connect_timeout=2) as conn:
            conn.connect()
        return None
    except Exception as e:  # refused, reset while booting, login refused: all "not yet"
        return repr(e)


def ensure_rabbitmq() -> str:
    """RabbitMQ on 127.0.0.1:5672, started (and left running) if it is not up."""
    if rabbit_answers() is None:
        return RABBIT
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError("rabbitmq-server is not installed: tools/bootstrap.sh must install "
                           "the Debian package rabbitmq-server")
    subprocess.run(["rabbitmq-server", "-detached"], check=False)
    deadline = time.monotonic() + 90
    while (why := rabbit_answers()) is not None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"RabbitMQ did not accept guest logins on 127.0.0.1:5672 within "
                               f"90 s of `rabbitmq-server -detached` ({why}): see "
                               "/var/log/rabbitmq/")
        time.sleep(0.25)
    return RABBIT


def restart_rabbitmq() -> None:
    """What a broker restart does to its clients: every connection dropped,
    the broker back a few seconds later."""
    subprocess.run(["rabbitmqctl", "stop_app"], capture_output=True, check=True, timeout=120)
    subprocess.run(["rabbitmqctl", "start_app"], capture_output=True, check=True, timeout=120)
    wait_until(lambda: rabbit_answers() is None, "RabbitMQ back", timeout=90)


def restart_postgresql() -> None:
    """A fast restart of the machine's PostgreSQL cluster (connections cut)."""
    import glob

    for version in sorted(glob.glob("/etc/postgresql/*")):
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect",
                        os.path.basename(version), "main", "restart", "-m", "fast"],
                       capture_output=True, check=True, timeout=120)
    wait_until(lambda: _tcp_open(5432), "PostgreSQL back", timeout=60)


def restart_libvirtd() -> None:
    """libvirtd killed and started again; the guests (QEMU processes) go on."""
    subprocess.run(["pkill", "-x", "libvirtd"], check=False)
    wait_until(lambda: subprocess.run(["pgrep", "-x", "libvirtd"], capture_output=True,
                                      check=False).returncode != 0, "libvirtd gone")
    from tether import daemons

    daemons.ensure_libvirtd()
