"""The distributed mode: `tether service api`, `tether service volume` and
`tether service compute` as three processes over RabbitMQ and PostgreSQL,
with the real tgt and libvirt drivers, driven over HTTP like any client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.harness import wait_for
from tests.integration.daemons import Tgtd, ensure_database_server
from tether.virt.libvirt.driver import LibvirtDriver

PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"
TOKEN = f"dist-service-{uuid.uuid4().hex}"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def cluster(tmp_path: Any, tgtd: Tgtd, libvirtd: None) -> Iterator[dict[str, Any]]:
    ensure_database_server("postgresql")
    name = f"tether_dist_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{PG}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    host = f"dist-{uuid.uuid4().hex[:6]}"
    compute_port, volume_port, image_port = _port(), _port(), _port()
    conf = tmp_path / "tether.conf"
    conf.write_text(f"""[DEFAULT]
host = {host}
transport_url = rabbit://guest:guest@127.0.0.1:5672/
control_exchange = tether-{host}
[database]
connection = {PG}/{name}
[api]
compute_port = {compute_port}
volume_port = {volume_port}
image_port = {image_port}
service_token = {TOKEN}
[volume]
target_port = {tgtd.portal_port}
tgt_control_port = {tgtd.control_port}
reconcile_interval = 0
[compute]
initiator_iqn = iqn.2010-10.org.tether:{host}
""")
    tether = [os.path.join(os.path.dirname(sys.executable), "tether"), "--config-file",
              str(conf), "--state-dir", str(tmp_path)]
    subprocess.run([*tether, "db", "upgrade"], check=True, capture_output=True)
    logs = [open(tmp_path / f"{svc}.err", "wb") for svc in ("api", "volume", "compute")]  # noqa: SIM115
    procs = [subprocess.Popen([*tether, "service", svc], stdout=subprocess.DEVNULL, stderr=log)
             for svc, log in zip(("api", "volume", "compute"), logs, strict=True)]
    http = httpx.Client(timeout=30, headers={"X-Auth-Token": "alice:p1"})
    urls = {"nova": f"http://127.0.0.1:{compute_port}/v2.1",
            "cinder": f"http://127.0.0.1:{volume_port}/v3"}
    servers: list[str] = []
    try:
        def up() -> bool:
            try:
                return all(http.get(u).status_code == 200 for u in urls.values())
            except httpx.HTTPError:
                return False
        wait_for(up, 60, "tether service api")
        yield {"http": http, "servers": servers, **urls, "tmp": tmp_path}
    finally:
        for sid in servers:
            LibvirtDriver().destroy(sid)
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


def test_attach_and_detach_across_processes(cluster: dict[str, Any], tgtd: Tgtd) -> None:
    http, nova, cinder = cluster["http"], cluster["nova"], cluster["cinder"]

    def created(url: str, body: dict[str, Any], key: str) -> str:
        deadline = time.monotonic() + 60
        while True:  # the first request may come before the services' first heartbeat
            res = http.post(url, json=body)
            if res.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert res.status_code == 202, res.text
        ident: str = res.json()[key]["id"]
        return ident

    sid = created(f"{nova}/servers", {"server": {"name": "d", "flavorRef": "1"}}, "server")
    cluster["servers"].append(sid)
    vid = created(f"{cinder}/volumes", {"volume": {"size": 1}}, "volume")
    wait_for(lambda: http.get(f"{nova}/servers/{sid}").json()["server"]["status"] == "ACTIVE",
             60, "server ACTIVE")
    wait_for(lambda: http.get(f"{cinder}/volumes/{vid}").json()["volume"]["status"] ==
             "available", 60, "volume available")

    res = http.post(f"{nova}/servers/{sid}/os-volume_attachments",
                    json={"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200, res.text
    wait_for(lambda: http.get(f"{cinder}/volumes/{vid}").json()["volume"]["status"] ==
             "in-use", 60, "volume in-use")
    assert f"volume-{vid}" in tgtd.show()

    res = http.delete(f"{nova}/servers/{sid}/os-volume_attachments/{vid}")
    assert res.status_code == 202
    wait_for(lambda: http.get(f"{cinder}/volumes/{vid}").json()["volume"]["status"] ==
             "available", 60, "volume available again")
    assert f"volume-{vid}" not in tgtd.show()
    actions = http.get(f"{nova}/servers/{sid}/os-instance-actions").json()["instanceActions"]
    assert [a["action"] for a in actions][:2] == ["detach_volume", "attach_volume"]
