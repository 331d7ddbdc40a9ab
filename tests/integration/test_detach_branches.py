"""Branches of the detach flow on the real daemons (issue 4): the end states
of the spec's table checked on libvirt, QEMU's iSCSI session and tgt."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.harness import Api, wait_for
from tests.integration.daemons import Tgtd
from tests.integration.stack import RealTether, domain_xml, real_tether, secret_exists, server
from tether.virt.driver import disk_alias
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

    # no host: the API does the storage side and the BDM, nothing else
    action = _detach(tether, nova.as_version("2.20"), sid, drop)
    assert not action["message"]
    assert _status(cinder, drop) == "available"

    nova.post(f"/v2.1/servers/{sid}/action", {"unshelve": None})
    wait_for(lambda: state("ACTIVE"), 30, "unshelved")
    assert _status(cinder, keep) == "in-use"
    assert disk_alias(keep) in domain_xml(sid) and disk_alias(drop) not in domain_xml(sid)
    assert tether.target.sessions(keep) == {tether.initiator}
