"""One volume on two servers of the same host (spec s2.2): the first detach
keeps the host's connection, the second removes it; the target admits the
host's initiator while any of its attachments lives."""

from __future__ import annotations

import logging

import pytest

from tests.harness import Tether
from tether.connectors.fake import FakeConnector


def test_first_detach_keeps_the_host_connection(tether: Tether,
                                                caplog: pytest.LogCaptureFixture) -> None:
    nova, cinder = tether.nova(), tether.api()
    a, b = tether.create_server(nova)["id"], tether.create_server(nova)["id"]
    vid = tether.create_volume(cinder, multiattach=True)["id"]
    for sid in (a, b):
        res = nova.post(f"/v2.1/servers/{sid}/os-volume_attachments",
                        {"volumeAttachment": {"volumeId": vid}})
        assert res.status_code == 200, res.text
        tether.wait_action(nova, sid, "attach_volume")
    connector = tether.connector
    assert isinstance(connector, FakeConnector)
    initiator = connector.initiator_iqn
    assert tether.target.exports()[vid].initiators == {initiator}
    caplog.set_level(logging.INFO)

    nova.delete(f"/v2.1/servers/{a}/os-volume_attachments/{vid}")
    tether.wait_action(nova, a, "detach_volume")
    assert (f"Detected multiple connections on this host for volume {vid}, skipping "
            "target disconnect") in caplog.text
    assert ("disconnect", vid) not in connector.calls
    assert tether.target.exports()[vid].initiators == {initiator}
    vol = cinder.get(f"/v3/volumes/{vid}").json["volume"]
    assert vol["status"] == "in-use"
    assert [x["server_id"] for x in vol["attachments"]] == [b]

    nova.delete(f"/v2.1/servers/{b}/os-volume_attachments/{vid}")
    tether.wait_action(nova, b, "detach_volume")
    assert ("disconnect", vid) in connector.calls
    assert vid not in tether.target.exports()
    assert cinder.get(f"/v3/volumes/{vid}").json["volume"]["status"] == "available"
