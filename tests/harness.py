"""An embedded Tether for tests: real database, real RPC (in-process
transport), real services; only the drivers are chosen by the test (fakes
for unit tests, tgt/libvirt for integration tests)."""

from __future__ import annotations

import contextlib
import queue
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import falcon.testing
import oslo_messaging as messaging
from oslo_config import cfg
from sqlalchemy import select, update

from tether import config
from tether.compute.repository import ComputeRepository
from tether.connectors.base import VolumeConnector
from tether.context import RequestContext
from tether.db import models
from tether.db.api import Database
from tether.db.records import BdmRecord
from tether.messaging import transport as tr
from tether.notifications import TOPIC
from tether.service import Drivers, Embedded
from tether.virt.driver import VirtDriver
from tether.volume.targets.base import TargetDriver

# every [quota] unlimited: tests that are not about quotas create what they need
UNLIMITED_QUOTAS: dict[str, object] = {
    name: -1 for name in (*config.BLOCK_STORAGE_QUOTAS, *config.COMPUTE_QUOTAS)}
INITIATOR_A = "iqn.2026-11.org.example:host-a"
INITIATOR_B = "iqn.2026-11.org.example:host-b"


def connector(initiator: str = INITIATOR_A, host: str = "host-a") -> dict[str, Any]:
    return {"initiator": initiator, "host": host, "ip": "127.0.0.1", "multipath": False,
            "platform": "x86_64", "os_type": "linux2"}


class Api:
    """HTTP calls through falcon's test client with a token and a microversion."""

    def __init__(self, app: falcon.App, token: str, version: str,
                 service: str = "volume") -> None:
        self.client = falcon.testing.TestClient(app)
        self.token = token
        self.version = version
        self.service = service

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> falcon.testing.Result:
        hdrs = {"X-Auth-Token": self.token,
                "OpenStack-API-Version": f"{self.service} {self.version}"}
        hdrs.update(headers or {})
        kwargs: dict[str, Any] = {"headers": hdrs}
        if body is not None:
            kwargs["json"] = body
        return self.client.simulate_request(method, path, **kwargs)

    def as_version(self, version: str) -> Api:
        other = Api.__new__(Api)
        other.client, other.token, other.service = self.client, self.token, self.service
        other.version = version
        return other

    def get(self, path: str, **kw: Any) -> falcon.testing.Result:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> falcon.testing.Result:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any = None, **kw: Any) -> falcon.testing.Result:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> falcon.testing.Result:
        return self.request("DELETE", path, **kw)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


Notification = tuple[str, str, dict[str, Any]]  # (priority, event type, payload)


@contextlib.contextmanager
def notifications(conf: cfg.ConfigOpts) -> Iterator[queue.Queue[Notification]]:
    """What is published on Tether's notification topic while in the block,
    consumed from the bus by a listener of its own (pool)."""
    got: queue.Queue[Notification] = queue.Queue()

    class Endpoint:
        def info(self, ctxt: Any, publisher: str, event: str, payload: Any, md: Any) -> None:
            got.put(("info", event, payload))

        def error(self, ctxt: Any, publisher: str, event: str, payload: Any, md: Any) -> None:
            got.put(("error", event, payload))

    transport = tr.notification_transport(conf, conf.transport_url)
    listener = tr.notification_listener(transport, [messaging.Target(topic=TOPIC)],
                                        [Endpoint()], pool=f"test-{uuid.uuid4().hex}")
    listener.start()
    try:
        yield got
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()


def next_about(got: queue.Queue[Notification], volume_id: str,
               timeout: float = 10.0) -> Notification:
    """The next notification about ``volume_id`` (others are skipped)."""
    while True:
        item = got.get(timeout=timeout)
        if item[2].get("volume_id") == volume_id:
            return item


class Tether:
    """Volume + compute services and both APIs in this process; HTTP calls go
    through falcon's test client, compute reaches block storage in process."""

    def __init__(self, state_dir: str, target: TargetDriver, virt: VirtDriver,
                 connector: VolumeConnector,
                 overrides: dict[str, dict[str, object]] | None = None) -> None:
        base: dict[str, dict[str, object]] = {
            "quota": dict(UNLIMITED_QUOTAS),
            "DEFAULT": {"transport_url": f"tether-inproc://{uuid.uuid4().hex}",
                        "host": "testhost"},
            "api": {"service_token": "test-service-token", "auth_strategy": "noauth"},
        }
        for group, values in (overrides or {}).items():
            base.setdefault(group, {}).update(values)
        self.conf = config.load(state_dir=state_dir, overrides=base)
        self.embedded = Embedded(self.conf, Drivers(target=target, virt=virt,
                                                    connector=connector))
        self.embedded.volume.start()
        self.embedded.compute.start()
        self.target = target
        self.virt = virt
        self.connector = connector
        self.db = self.embedded.db
        self.volume_app = self.embedded.api.volume_app
        self.compute_app = self.embedded.api.compute_app
        self.image_app = self.embedded.api.image_app

    def api(self, token: str = "alice:p1", version: str = "3.71") -> Api:
        return Api(self.volume_app, token, version)

    def nova(self, token: str = "alice:p1", version: str = "2.89") -> Api:
        return Api(self.compute_app, token, version, service="compute")

    def glance(self, token: str = "alice:p1") -> Api:
        return Api(self.image_app, token, "2.0", service="image")

    def create_volume(self, api: Api, size: int = 1, **extra: Any) -> dict[str, Any]:
        res = api.post("/v3/volumes", {"volume": {"size": size, **extra}})
        assert res.status_code == 202, res.text
        vid = res.json["volume"]["id"]
        return dict(wait_for(lambda: _status_is(api, vid, "available"),
                             what=f"volume {vid} available"))

    def create_server(self, nova: Api, name: str = "vm") -> dict[str, Any]:
        res = nova.post("/v2.1/servers", {"server": {"name": name, "flavorRef": "1"}})
        assert res.status_code == 202, res.text
        sid = res.json["server"]["id"]
        return dict(wait_for(lambda: _server_status_is(nova, sid, "ACTIVE"),
                             what=f"server {sid} ACTIVE"))

    def server_with_volume(self, token: str = "alice:p1") -> tuple[Api, Api, str, str]:
        """A new server with a new volume attached: (nova, cinder, server, volume)."""
        nova, cinder = self.nova(token), self.api(token)
        sid = self.create_server(nova)["id"]
        vid = self.create_volume(cinder)["id"]
        res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                        {"volumeAttachment": {"volumeId": vid}})
        assert res.status_code == 200, res.text
        self.wait_action(nova, sid, "attach_volume")
        return nova, cinder, sid, vid

    def wait_action(self, nova: Api, server_id: str, action: str,
                    timeout: float = 30.0) -> dict[str, Any]:
        """The newest ``action`` of the server once it has finished."""
        def finished() -> dict[str, Any] | None:
            rows = nova.get(f"/v2.1/servers/{server_id}/os-instance-actions").json[
                "instanceActions"]
            rows = [r for r in rows if r["action"] == action]
            if not rows or not rows[0]["finish_time"]:
                return None
            detail: dict[str, Any] = nova.get(
                f"/v2.1/servers/{server_id}/os-instance-actions/{rows[0]['request_id']}"
            ).json["instanceAction"]
            return detail
        return dict(wait_for(finished, timeout, what=f"{action} of {server_id} finished"))

    def stop(self) -> None:
        self.embedded.compute.stop()
        self.embedded.volume.stop()
        self.embedded.rpc.stop()
        self.embedded.db.dispose()


def _status_is(api: Api, vid: str, status: str) -> dict[str, Any] | None:
    vol = api.get(f"/v3/volumes/{vid}").json["volume"]
    return vol if vol["status"] == status else None


def _server_status_is(nova: Api, sid: str, status: str) -> dict[str, Any] | None:
    srv = nova.get(f"/v2.1/servers/{sid}").json["server"]
    return srv if srv["status"] == status else None



def add_old_flow_bdm(db: Database, server_id: str, volume_id: str,
                     connection_info: dict[str, Any]) -> None:
    """A block device mapping as the old attach flow left it: no attachment
    id, the connection_info (maybe with a stashed connector) kept on it."""
    with db.begin() as c:
        ComputeRepository.claim_bdm(c, {
            "uuid": str(uuid.uuid4()), "instance_uuid": server_id, "volume_id": volume_id,
            "attachment_id": None, "device_name": "/dev/sdb", "disk_bus": "scsi",
            "source_type": "volume", "destination_type": "volume",
            "connection_info": connection_info})


# -- what another process, another host or a crash did: direct writes ---------

def set_row(db: Database, model: type[models.Base], key: Any, **values: Any) -> None:
    """Change a row behind Tether's back (a test's setup only)."""
    table: Any = model.__table__
    (pk,) = table.primary_key.columns
    with db.engine.begin() as c:
        c.execute(update(table).where(pk == key).values(**values))


def db_rows(db: Database, model: type[models.Base], **where: Any) -> list[Any]:
    table: Any = model.__table__
    with db.engine.connect() as c:
        return list(c.execute(select(table).where(
            *[table.c[k] == v for k, v in where.items()])).all())


def bdm_of(db: Database, server_id: str, volume_id: str) -> BdmRecord:
    with db.begin() as c:
        bdm = ComputeRepository.live_bdm(c, server_id, volume_id)
    assert bdm is not None, f"no mapping of {volume_id} on {server_id}"
    return bdm


def queued(t: Tether, server_id: str, action: str, volume_id: str | None = None,
           args: dict[str, Any] | None = None, token: str = "alice:p1") -> int:
    """An operation as the API hands it to the host (queued), but not cast."""
    user, _, project = token.partition(":")
    api = t.embedded.api.compute_api
    with t.db.begin() as c:
        return api.ops.new(c, RequestContext(user, project), server_id, action,
                           status="queued", resource_id=volume_id, args=args).id


def queued_detach(t: Tether, server_id: str, volume_id: str) -> int:
    """What the API does for a detach (begin_detaching, the operation
    queued) without the cast: the host runs it when the test says."""
    t.api("admin:p1").post(f"/v3/volumes/{volume_id}/action", {"os-begin_detaching": {}})
    bdm = bdm_of(t.db, server_id, volume_id)
    return queued(t, server_id, "detach_volume", volume_id, {
        "bdm": bdm.uuid, "attachment": bdm.attachment_id, "offloaded": False})


def run_on_host(t: Tether, server_id: str, action_id: int) -> bool:
    """The host takes the operation, as the cast would make it."""
    return t.embedded.compute.manager.run_operation(
        RequestContext("alice", "p1"), server_id, action_id)
