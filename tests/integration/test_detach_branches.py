"""Branches of the detach flow on the real daemons (issue 4): the end states
of the spec's table checked on libvirt, QEMU's iSCSI session and tgt."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import pathlib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Api, add_old_flow_bdm, bdm_of, db_rows, set_row, wait_for
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, domain_xml, real_tether, secret_exists, server
from tether.connection import ConnectionInfo
from tether.db import models
from tether.virt.driver import DiskSpec, disk_alias
from tether.virt.libvirt.driver import LibvirtDriver


@pytest.fixture(scope="module")
def tether(tmp_path_factory: pytest.TempPathFactory, tgtd: Tgtd,
           libvirtd: None) -> Iterator[RealTether]:
    with real_tether(str(tmp_path_factory.mktemp("branches")), tgtd,
                     {"compute": {"shelved_offload_time": -1}}) as t:
        yield t


def _attach(t: RealTether, nova: Api, sid: str, vid: str) -> None:
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": vid}})
    assert res.status_code == 200, res.text
    action = t.wait_action(nova, sid, "attach_volume")
    assert not action["message"], action


def _detach(t: RealTether, nova: Api, sid: str, vid: str) -> dict[str, object]:
    assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}").status_code == 202
    return t.wait_action(nova, sid, "detach_volume")


def _status(cinder: Api, vid: str) -> str:
    return str(cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"])


def test_multiattach_on_one_host(tether: RealTether,
                                 caplog: pytest.LogCaptureFixture) -> None:
    nova, cinder = tether.nova(), tether.api()
    a, b = server(tether, nova), server(tether, nova)
    vid = tether.create_volume(cinder, multiattach=True)["id"]
    _attach(tether, nova, a, vid)
    _attach(tether, nova, b, vid)
    alias = disk_alias(vid)
    assert alias in domain_xml(a) and alias in domain_xml(b)
    assert tether.target.exports()[vid].initiators == {tether.initiator}
    caplog.set_level(logging.INFO)

    assert not _detach(tether, nova, a, vid)["message"]
    assert "Detected multiple connections on this host for volume" in caplog.text
    assert alias not in domain_xml(a) and alias in domain_xml(b)
    assert tether.target.exports()[vid].initiators == {tether.initiator}
    assert tether.target.sessions(vid) == {tether.initiator}  # b's QEMU still reads it
    assert secret_exists(vid)
    assert _status(cinder, vid) == "in-use"

    assert not _detach(tether, nova, b, vid)["message"]
    assert alias not in domain_xml(b)
    assert vid not in tether.target.exports() and not secret_exists(vid)
    assert _status(cinder, vid) == "available"


def test_disk_already_gone_from_the_guest(tether: RealTether,
                                          caplog: pytest.LogCaptureFixture) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid)
    LibvirtDriver().detach_disk(sid, vid, timeout=10, attempts=1)  # behind Tether's back
    caplog.set_level(logging.WARNING)
    assert not _detach(tether, nova, sid, vid)["message"]
    assert "Ignoring DiskNotFound" in caplog.text
    assert _status(cinder, vid) == "available"
    assert vid not in tether.target.exports() and not secret_exists(vid)


def test_guest_domain_missing(tether: RealTether, caplog: pytest.LogCaptureFixture) -> None:
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid)
    LibvirtDriver().destroy(sid)
    caplog.set_level(logging.WARNING)
    assert not _detach(tether, nova, sid, vid)["message"]
    assert "disappeared from the hypervisor" in caplog.text
    assert _status(cinder, vid) == "available"
    assert vid not in tether.target.exports() and not secret_exists(vid)


def test_shelve_offload_detach_and_unshelve(tether: RealTether) -> None:
    nova, cinder = tether.nova(), tether.api()
    admin = tether.nova("admin:p1")
    sid = server(tether, nova)
    keep, drop = (tether.create_volume(cinder)["id"] for _ in range(2))
    _attach(tether, nova, sid, keep)
    _attach(tether, nova, sid, drop)

    def state(status: str) -> bool:
        return bool(nova.get(f"/v2.1/servers/{sid}").json["server"]["status"] == status)

    nova.post(f"/v2.1/servers/{sid}/action", {"shelve": None})
    wait_for(lambda: state("SHELVED"), 30, "shelved")
    admin.post(f"/v2.1/servers/{sid}/action", {"shelveOffload": None})
    wait_for(lambda: state("SHELVED_OFFLOADED"), 30, "offloaded")
    for vid in (keep, drop):
        assert vid not in tether.target.exports() and not secret_exists(vid)
        assert _status(cinder, vid) == "reserved"

    res = nova.as_version("2.19").delete(f"/v2.1/servers/{sid}/os-volume_attachments/{drop}")
    assert res.status_code == 409 and "2.20" in res.json["conflictingRequest"]["message"]
    assert _status(cinder, drop) == "reserved"

    # no host: the API does the storage side and the BDM, nothing else
    action = _detach(tether, nova.as_version("2.20"), sid, drop)
    assert not action["message"]
    assert _status(cinder, drop) == "available"

    nova.post(f"/v2.1/servers/{sid}/action", {"unshelve": None})
    wait_for(lambda: state("ACTIVE"), 30, "unshelved")
    assert _status(cinder, keep) == "in-use"
    assert disk_alias(keep) in domain_xml(sid) and disk_alias(drop) not in domain_xml(sid)
    assert tether.target.sessions(keep) == {tether.initiator}


# -- the old flow: a BDM without an attachment id -----------------------------

OLD_HOST, OLD_IQN = "old-host", "iqn.2026-11.org.example:old-host"


def _bdm_deleted(t: RealTether, sid: str, vid: str) -> bool:
    (bdm,) = db_rows(t.db, models.BlockDeviceMapping, instance_uuid=sid, volume_id=vid)
    return bool(bdm.deleted and bdm.deleted_at is not None)


def _set_host(t: RealTether, sid: str, host: str) -> None:
    set_row(t.db, models.Instance, sid, host=host)


@contextlib.contextmanager
def _evacuated_before_handling(t: RealTether, sid: str, host: str) -> Iterator[None]:
    """The server moves to ``host`` between the API's cast and this host's
    handling of it: the compute manager's lock on the server is held meanwhile.
    On the way out the server comes back here (so that it can be deleted)."""
    try:
        with t.embedded.compute.manager._locked(sid):
            yield
            _set_host(t, sid, host)
        wait = t.wait_action(t.nova(), sid, "detach_volume")
        assert wait["finish_time"]
    finally:
        _set_host(t, sid, "testhost")


@pytest.fixture
def acl_at_os_detach(tether: RealTether, monkeypatch: pytest.MonkeyPatch
                     ) -> dict[str, frozenset[str]]:
    """The initiators tgt admits to each volume when os-detach (s1.3) is
    called, that is after os-terminate_connection (s1.2)."""
    seen: dict[str, frozenset[str]] = {}
    volumes = tether.embedded.compute.manager.detach.volumes
    real = volumes.detach

    def detach(volume_id: str, attachment_id: str | None) -> None:
        export = tether.target.exports().get(volume_id)
        seen[volume_id] = export.initiators if export else frozenset()
        real(volume_id, attachment_id)

    monkeypatch.setattr(volumes, "detach", detach)
    return seen


def _legacy_attach(t: RealTether, sid: str, vid: str, connector: dict[str, Any],
                   stash: dict[str, Any] | None) -> None:
    """What an old compute host did: os-reserve, os-initialize_connection
    with its connector (tgt admits that initiator), the disk into the guest
    when the connector is this host's, os-attach; then the BDM, without an
    attachment id, with the connector stashed in its connection_info."""
    admin = t.api("admin:p1")  # CHAP secrets are shown to admins only
    act = f"/v3/volumes/{vid}/action"
    assert admin.post(act, {"os-reserve": {}}).status_code == 202
    res = admin.post(act, {"os-initialize_connection": {"connector": connector}})
    assert res.status_code == 200, res.text
    info = ConnectionInfo.from_dict(res.json["connection_info"])
    if connector["initiator"] == t.initiator:
        t.virt.attach_disk(sid, DiskSpec(volume_id=vid, target_dev="sdb", bus="scsi",
                                         source=t.connector.connect(info)))
    assert admin.post(act, {"os-attach": {"instance_uuid": sid, "mountpoint": "/dev/sdb",
                                          "host_name": connector["host"]}}
                      ).status_code == 202
    kept = info.to_dict(with_secret=False) | ({"connector": stash} if stash else {})
    add_old_flow_bdm(t.db, sid, vid, kept)
    assert t.target.exports()[vid].initiators == {connector["initiator"]}


def test_old_flow_uses_the_connector_stashed_for_the_servers_host(
        tether: RealTether, tgtd: Tgtd, acl_at_os_detach: dict[str, frozenset[str]],
        caplog: pytest.LogCaptureFixture) -> None:
    """Evacuated: old-host connected the volume and stashed its connector, and
    the server is registered to old-host when the detach is handled here."""
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    old = {"host": OLD_HOST, "initiator": OLD_IQN, "ip": "192.0.2.7"}
    _legacy_attach(tether, sid, vid, old, stash=old)
    guest = domain_xml(sid)
    caplog.set_level(logging.INFO)
    with _evacuated_before_handling(tether, sid, OLD_HOST):
        assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
                           ).status_code == 202
    assert acl_at_os_detach[vid] == frozenset()  # s1.2 took old-host's initiator out
    assert f"Using the connector stashed for host {OLD_HOST}" in caplog.text
    assert vid not in tether.target.exports() and f"volume-{vid}" not in tgtd.show()
    assert _status(cinder, vid) == "available" and _bdm_deleted(tether, sid, vid)
    assert domain_xml(sid) == guest  # the server is old-host's: no guest work here


@pytest.mark.parametrize(("stash", "level", "message"), [
    (None, logging.WARNING, "No connector stashed in the connection_info"),
    ({"host": "third-host", "initiator": "iqn.2026-11.org.example:third"}, logging.ERROR,
     "belongs to host third-host, which is neither this host"),
], ids=["nothing-stashed", "third-hosts-stashed"])
def test_old_flow_falls_back_to_this_hosts_connector(
        tether: RealTether, tgtd: Tgtd, acl_at_os_detach: dict[str, frozenset[str]],
        caplog: pytest.LogCaptureFixture, stash: dict[str, Any] | None, level: int,
        message: str) -> None:
    """Nothing stashed (warning), or the stash of a host that is neither this
    one nor the server's (error): this host's connector terminates the
    connection this host made, and the guest here loses the disk."""
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _legacy_attach(tether, sid, vid, tether.connector.properties().to_dict(), stash)
    alias = disk_alias(vid)
    assert alias in domain_xml(sid) and tether.target.sessions(vid) == {tether.initiator}
    caplog.set_level(logging.INFO)

    assert not _detach(tether, nova, sid, vid)["message"]
    assert any(r.levelno == level and message in r.getMessage() for r in caplog.records)
    assert acl_at_os_detach[vid] == frozenset()  # s1.2 took this host's initiator out
    assert alias not in domain_xml(sid) and alias not in domain_xml(sid, inactive=True)
    assert not secret_exists(vid)
    assert vid not in tether.target.exports() and f"volume-{vid}" not in tgtd.show()
    assert _status(cinder, vid) == "available" and _bdm_deleted(tether, sid, vid)


def test_server_registered_elsewhere_keeps_the_guest_disk_but_cleans_storage(
        tether: RealTether, tgtd: Tgtd, caplog: pytest.LogCaptureFixture) -> None:
    """The cast reached this host but the server is now another host's: no
    driver detach (the real guest keeps the disk, live and persistent), the
    error is logged, and storage is still cleaned."""
    nova, cinder = tether.nova(), tether.api()
    sid = server(tether, nova)
    vid = tether.create_volume(cinder)["id"]
    _attach(tether, nova, sid, vid)
    connection_info = bdm_of(tether.db, sid, vid).connection_info
    assert connection_info is not None
    info = ConnectionInfo.from_dict(connection_info)
    caplog.set_level(logging.ERROR)
    try:
        with _evacuated_before_handling(tether, sid, "elsewhere"):
            assert nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}"
                               ).status_code == 202
        action = tether.wait_action(nova, sid, "detach_volume")
        assert not action["message"]
        assert [e["event"] for e in action["events"]] == [
            "s1:compute_api", "s1.2+s1.3:attachment_delete"]
        assert ("the instance is registered to host elsewhere, not this host testhost"
                in caplog.text)
        alias = disk_alias(vid)
        assert alias in domain_xml(sid) and alias in domain_xml(sid, inactive=True)
        assert secret_exists(vid)  # no s2 either: the host side is the server's host's
        assert vid not in tether.target.exports() and f"volume-{vid}" not in tgtd.show()
        assert _status(cinder, vid) == "available" and _bdm_deleted(tether, sid, vid)
    finally:
        tether.connector.disconnect(info)  # what the server's real host would have done


def test_compute_service_down_is_409_and_changes_nothing(
        tmp_path: pathlib.Path, tgtd: Tgtd, libvirtd: None) -> None:
    """The compute service stops reporting; once its last heartbeat is older
    than ``[compute] service_down_time`` a detach is refused and nothing moves
    (a stack of its own: this one's heartbeat is stopped)."""
    with real_tether(str(tmp_path), tgtd) as t:
        nova, cinder = t.nova(), t.api()
        sid = server(t, nova)
        vid = t.create_volume(cinder)["id"]
        _attach(t, nova, sid, vid)
        heartbeat = t.embedded.compute.heartbeat
        heartbeat.stop()
        try:
            (svc,) = db_rows(t.db, models.Service, uuid=heartbeat.uuid)
            set_row(t.db, models.Service, svc.id,  # the interval passed without a beat
                    last_seen_at=svc.last_seen_at - dt.timedelta(
                        seconds=t.conf.compute.service_down_time + 1))
            res = nova.delete(f"/v2.1/servers/{sid}/os-volume_attachments/{vid}")
            assert res.status_code == 409, res.text
            assert "unavailable" in res.json["conflictingRequest"]["message"]
            actions = nova.get(f"/v2.1/servers/{sid}/os-instance-actions").json[
                "instanceActions"]
            assert [r["action"] for r in actions if r["action"] == "detach_volume"] == []
            assert _status(cinder, vid) == "in-use" and not _bdm_deleted(t, sid, vid)
            alias = disk_alias(vid)
            assert alias in domain_xml(sid) and alias in domain_xml(sid, inactive=True)
            assert t.target.exports()[vid].initiators == {t.initiator}
            assert t.target.sessions(vid) == {t.initiator} and secret_exists(vid)
        finally:
            heartbeat.beat()  # up again, so that the server can be deleted


def test_tagged_volume_is_in_device_metadata_as_the_guest_sees_it(tether: RealTether) -> None:
    """Microversion 2.49 tags an attachment; the device metadata names the
    disk as the real guest has it (bus, device, serial) until the detach."""
    nova, cinder = tether.nova(version="2.49"), tether.api()
    sid = server(tether, nova)
    tagged, plain = (tether.create_volume(cinder)["id"] for _ in range(2))
    res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                    {"volumeAttachment": {"volumeId": tagged, "tag": "database"}})
    assert res.status_code == 200, res.text
    tether.wait_action(nova, sid, "attach_volume")
    _attach(tether, nova, sid, plain)

    (device,) = nova.get(f"/v2.1/servers/{sid}/device-metadata").json["devices"]
    assert device["serial"] == tagged and device["tags"] == ["database"]
    (disk,) = [d for d in ET.fromstring(domain_xml(sid)).iter("disk")
               if d.findtext("serial") == tagged]
    target = disk.find("target")
    assert target is not None
    assert (device["path"], device["bus"]) == (f"/dev/{target.get('dev')}", target.get("bus"))

    assert not _detach(tether, nova, sid, tagged)["message"]
    assert nova.get(f"/v2.1/servers/{sid}/device-metadata").json["devices"] == []
    assert disk_alias(tagged) not in domain_xml(sid) and disk_alias(plain) in domain_xml(sid)
    assert _status(cinder, tagged) == "available"
