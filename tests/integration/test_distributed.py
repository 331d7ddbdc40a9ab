"""The distributed mode: `tether service api`, `tether service volume` and
`tether service compute` as three processes over RabbitMQ and PostgreSQL,
with the real tgt and libvirt drivers, driven over HTTP like any client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.cluster import Cluster, distributed
from tests.integration.daemons import Tgtd


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
