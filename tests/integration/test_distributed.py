"""The distributed mode: `tether service api`, `tether service volume` and
`tether service compute` as three processes over RabbitMQ and PostgreSQL,
with the real tgt and libvirt drivers, driven over HTTP like any client."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.harness import wait_for
from tests.integration.cluster import Cluster, distributed
from tests.integration.daemons import ServerUnavailable, Tgtd, database_server, free_port


@pytest.fixture(params=["noauth", "local"])
def cluster(request: pytest.FixtureRequest, tmp_path: Any, tgtd: Tgtd, libvirtd: None,
            rabbit: str) -> Iterator[Cluster]:
    """Both ways to know callers; with local, the compute process gets its
    service token from the API process's identity over HTTP."""
    with distributed(str(tmp_path), tgtd, auth_strategy=request.param) as c:
        yield c


def test_attach_and_detach_across_processes(cluster: Cluster, tgtd: Tgtd) -> None:
    http, nova = cluster.http, cluster.nova
    sid = cluster.server()
    vid = cluster.volume()

    res = http.post(f"{nova}/servers/{sid}/os-volume_attachments",
                    json={"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200, res.text
    cluster.wait_volume(vid, "in-use")
    assert f"volume-{vid}" in tgtd.show()

    res = http.delete(f"{nova}/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 202
    cluster.wait_volume(vid, "available")
    assert f"volume-{vid}" not in tgtd.show()
    actions = http.get(f"{nova}/servers/{sid}/os-instance-actions").json()["instanceActions"]
    assert [a["action"] for a in actions][:2] == ["detach_volume", "attach_volume"]


def test_two_api_processes_starting_at_once_make_one_admin(tmp_path: Any, rabbit: str) -> None:
    """Two ``tether service api`` of two hosts (own state dirs, ports) start at
    once on one PostgreSQL database in local mode: one admin user, one
    password file left, and that password gets a token from either."""
    try:
        pg = database_server("postgresql")
    except ServerUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    name = f"tether_boot_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{pg}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    hosts = []
    try:
        for i in range(2):
            state = os.path.join(str(tmp_path), f"host{i}")
            os.makedirs(state)
            port = free_port()
            with open(os.path.join(state, "tether.conf"), "w") as f:
                f.write(f"[DEFAULT]\nhost = boot-{i}-{name}\ntransport_url = {rabbit}\n"
                        f"control_exchange = {name}\n[database]\nconnection = {pg}/{name}\n"
                        f"[api]\nidentity_port = {port}\ncompute_port = {free_port()}\n"
                        f"volume_port = {free_port()}\nimage_port = {free_port()}\n")
            hosts.append((state, port))
        tether = os.path.join(os.path.dirname(sys.executable), "tether")
        argv = [tether, "--config-file", os.path.join(hosts[0][0], "tether.conf"),
                "--state-dir", hosts[0][0], "db", "upgrade"]
        subprocess.run(argv, check=True, capture_output=True)
        for state, _ in hosts:
            logs.append(open(os.path.join(state, "api.err"), "wb"))  # noqa: SIM115
            procs.append(subprocess.Popen(
                [tether, "--config-file", os.path.join(state, "tether.conf"), "--state-dir",
                 state, "service", "api"], stdout=subprocess.DEVNULL, stderr=logs[-1]))

        def both_up() -> bool:
            try:
                return all(httpx.get(f"http://127.0.0.1:{p}/v3", timeout=2).status_code == 200
                           for _, p in hosts)
            except httpx.HTTPError:
                return False
        wait_for(lambda: both_up() or any(p.poll() is not None for p in procs), 60,
                 "both API processes up")
        assert all(p.poll() is None for p in procs), "an API process exited"
        engine = sa.create_engine(f"{pg}/{name}")
        with engine.connect() as conn:
            names = [r[0] for r in conn.execute(sa.text("SELECT name FROM identity_users"))]
        engine.dispose()
        assert sorted(names) == ["admin", "tether"]
        files = [os.path.join(s, "admin-password") for s, _ in hosts
                 if os.path.exists(os.path.join(s, "admin-password"))]
        assert len(files) == 1, files
        with open(files[0]) as f:
            password = f.read().strip()
        for _, port in hosts:
            res = httpx.post(f"http://127.0.0.1:{port}/v3/auth/tokens", timeout=30, json={
                "auth": {"identity": {"methods": ["password"], "password": {"user": {
                    "name": "admin", "domain": {"name": "Default"}, "password": password}}},
                    "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})
            assert res.status_code == 201, res.text
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        for log in logs:
            log.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()
