"""``tether audit [--repair]`` as an operator runs it (its own process, the
services' --state-dir and configuration) on the real daemons, while the
stack that owns them runs: a stack after attach and detach audits clean;
drift made behind Tether's back with tgtadm and virsh is reported, the safe
part repaired, the rest left, and the audit after the repair says so.

The stack has a tgtd of its own (so no other module's leftovers count) and
a domain prefix of its own: the audit counts every domain and secret with
its prefix as its own, and other checkouts' test runs may share this
host's libvirtd.  Everything the test makes behind Tether's back is removed
at the end, repaired or not."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.harness import db_rows
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, real_tether, server
from tether.db import models
from tether.virt.driver import ServerSpec, disk_alias
from tether.virt.libvirt.driver import LibvirtDriver
from tether.virt.libvirt.xml import domain_xml
from tether.volume.targets.base import target_iqn

PREFIX = f"tether-au{uuid.uuid4().hex[:6]}-"
ROOT = str(Path(tether.__file__).resolve().parent.parent)  # this checkout
VIRSH = ["virsh", "-c", "qemu:///system"]


@pytest.fixture(scope="module")
def own_tgtd() -> Iterator[Tgtd]:
    daemon = Tgtd().start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, own_tgtd: Tgtd,
          libvirtd: None) -> Iterator[RealTether]:
    with real_tether(str(tmp_path_factory.mktemp("audit")), own_tgtd,
                     overrides={"compute": {"domain_prefix": PREFIX}}) as t:
        yield t


def audit(t: RealTether, tgtd: Tgtd, *args: str) -> tuple[int, str]:
    """``tether audit`` in its own process, configured as the stack's services."""
    conf = os.path.join(t.conf.state_dir, "audit.conf")
    with open(conf, "w") as f:
        f.write(f"[DEFAULT]\nhost = {t.conf.host}\n"
                f"[volume]\ntarget_port = {tgtd.portal_port}\n"
                f"tgt_control_port = {tgtd.control_port}\n"
                f"[compute]\ninitiator_iqn = {t.initiator}\ndomain_prefix = {PREFIX}\n")
    proc = subprocess.run([sys.executable, "-m", "tether.cli", "--config-file", conf,
                           "--state-dir", t.conf.state_dir, "audit", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.stderr == "", proc.stderr
    return proc.returncode, proc.stdout


def tgtadm(tgtd: Tgtd, *args: str) -> str:
    return subprocess.run(["tgtadm", "-C", str(tgtd.control_port), "--lld", "iscsi", *args],
                          capture_output=True, text=True, check=True).stdout


def virsh(*args: str, check: bool = True) -> str:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True,
                          check=check).stdout


def _attach(t: RealTether, sid: str, vid: str) -> None:
    nova = t.nova()
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200, res.text
    assert not t.wait_action(nova, sid, "attach_volume")["message"]


def by_kind(doc: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for f in doc["findings"]:
        if f["state"] == "drift":
            out.setdefault(f["kind"], []).append(f)
    return out


def test_audit_and_repair_on_the_real_daemons(stack: RealTether, own_tgtd: Tgtd,
                                              tmp_path: Path) -> None:
    started = time.monotonic()
    t, tgtd = stack, own_tgtd
    nova, cinder = t.nova(), t.api()
    sid = server(t, nova)
    gone, kept = t.create_volume(cinder)["id"], t.create_volume(cinder)["id"]
    _attach(t, sid, gone)
    _attach(t, sid, kept)
    assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{gone}").status_code == 202
    assert not t.wait_action(nova, sid, "detach_volume")["message"]

    rc, out = audit(t, tgtd)
    assert (rc, out) == (0, "audit: no drift (1 server, 1 domain, 2 volumes, 1 export)\n")

    # -- drift behind Tether's back -----------------------------------------------
    stray_server, stray_volume = str(uuid.uuid4()), str(uuid.uuid4())
    stray_account = "tether" + uuid.uuid4().hex[:14]
    secret_file, domain_file = tmp_path / "secret.xml", tmp_path / "domain.xml"
    secret_file.write_text(f"<secret ephemeral='no' private='yes'><usage type='iscsi'>"
                           f"<target>{PREFIX}volume-{stray_volume}</target></usage></secret>")
    domain_file.write_text(domain_xml(ServerSpec(stray_server, PREFIX + stray_server, 1, 64),
                                      "qemu"))
    try:
        tid = re.search(rf"^Target (\d+): {re.escape(target_iqn(kept))}$", tgtd.show(),
                        re.MULTILINE)
        assert tid is not None
        tgtadm(tgtd, "--op", "delete", "--force", "--mode", "target", "--tid", tid.group(1))
        tgtadm(tgtd, "--op", "new", "--mode", "account", "--user", stray_account,
               "--password", "not-a-real-one")
        virsh("secret-define", str(secret_file))
        virsh("define", str(domain_file))
        virsh("detach-device-alias", PREFIX + sid, disk_alias(kept), "--config")

        rc, out = audit(t, tgtd, "--format", "json")
        assert rc == 1
        found = by_kind(json.loads(out))
        assert {k: [f["resource"] for f in v] for k, v in found.items()} == {
            "missing-disk": [f"server {sid} volume {kept}"],
            "stray-domain": [f"domain {PREFIX}{stray_server}"],
            "stray-secret": [f"secret {PREFIX}volume-{stray_volume}"],
            "missing-export": [f"volume {kept}"],
            "stray-account": [f"account {stray_account}"]}
        assert found["missing-disk"][0]["detail"] == (
            f"connected, but disk {disk_alias(kept)} is missing from the persistent definition")

        rc, out = audit(t, tgtd, "--repair")
        assert rc == 1, out
        lines = out.splitlines()
        assert sorted(line.split()[1] for line in lines if line.startswith("REPAIRED")) == [
            "missing-export", "stray-account", "stray-domain", "stray-secret"]
        assert [line.split()[1] for line in lines if line.startswith("LEFT")] == [
            "missing-disk"]
        assert lines[-1] == ("audit: 5 drifts: 4 repaired, 1 left; after repair: 1 drift "
                             "remains")
        # the repairs, as the daemons show them
        shown = tgtd.show()
        assert target_iqn(kept) in shown and t.initiator in shown
        assert stray_account not in tgtadm(tgtd, "--op", "show", "--mode", "account")
        assert stray_volume not in virsh("secret-list")
        assert PREFIX + stray_server not in virsh("list", "--all", "--name")

        rc, out = audit(t, tgtd, "--format", "json")
        assert rc == 1 and list(by_kind(json.loads(out))) == ["missing-disk"]
        (vol,) = db_rows(t.db, models.Volume, id=kept)
        password = t.embedded.volume.manager.box.open(vol.chap_password, kept)
        assert password and password not in out
    finally:  # whatever the repair did not remove
        libvirt = LibvirtDriver(domain_prefix=PREFIX)
        libvirt.undefine_chap_secret(stray_volume)
        libvirt.destroy(stray_server)
        subprocess.run(["tgtadm", "-C", str(tgtd.control_port), "--lld", "iscsi", "--op",
                        "delete", "--mode", "account", "--user", stray_account],
                       capture_output=True, check=False)
    print(f"\naudit integration test: {time.monotonic() - started:.1f} s")
