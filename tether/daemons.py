"""Start the host daemons Tether drives (tgtd, virtlogd, libvirtd) when they
are not running: there is no init system to rely on in containers and CI.
Used by ``tether demo``; services themselves only report a missing daemon."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time

LOG = logging.getLogger(__name__)


def _wait(check: list[str], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(check, capture_output=True, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up within {timeout:.0f}s")
        time.sleep(0.05)


def tgtd_running(control_port: int = 0) -> bool:
    return subprocess.run(["tgtadm", "-C", str(control_port), "--lld", "iscsi", "--op", "show",
                           "--mode", "sys"], capture_output=True, check=False).returncode == 0


def ensure_tgtd(control_port: int = 0) -> bool:
    """Start the system tgtd if it does not answer; True if we started it."""
    if tgtd_running(control_port):
        return False
    if shutil.which("tgtd") is None:
        raise RuntimeError("tgtd is not installed (Debian package tgt)")
    subprocess.run(["tgtd", "--control-port", str(control_port)], check=True)
    _wait(["tgtadm", "-C", str(control_port), "--lld", "iscsi", "--op", "show", "--mode", "sys"],
          "tgtd")
    LOG.info("started tgtd (control port %d)", control_port)
    return True


def ensure_libvirtd() -> bool:
    """Start virtlogd and libvirtd if qemu:///system does not answer."""
    check = ["virsh", "-c", "qemu:///system", "version"]
    if subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return False
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run([daemon, "-d"], check=True)
    _wait(check, "libvirtd")
    LOG.info("started virtlogd and libvirtd")
    return True
