from __future__ import annotations

import pytest

from tether.api.errors import ApiError
from tether.api.versions import COMPUTE, VOLUME, Version


def test_default_is_minimum_and_latest_is_maximum() -> None:
    assert VOLUME.negotiate({}) == Version(3, 0)
    assert VOLUME.negotiate({"openstack-api-version": "volume latest"}) == VOLUME.maximum


def test_standard_header_picks_own_service() -> None:
    headers = {"openstack-api-version": "compute 2.60, volume 3.44"}
    assert VOLUME.negotiate(headers) == Version(3, 44)
    assert COMPUTE.negotiate(headers) == Version(2, 60)


def test_legacy_nova_header() -> None:
    assert COMPUTE.negotiate({"x-openstack-nova-api-version": "2.79"}) == Version(2, 79)
    assert VOLUME.negotiate({"x-openstack-nova-api-version": "2.79"}) == Version(3, 0)


@pytest.mark.parametrize("value", ["volume 2.9", "volume 3.72", "volume 4.0"])
def test_out_of_range_is_406(value: str) -> None:
    with pytest.raises(ApiError) as err:
        VOLUME.negotiate({"openstack-api-version": value})
    assert err.value.status == 406
    assert "Minimum is 3.0 and maximum is 3.71" in err.value.message


@pytest.mark.parametrize("value", ["volume three", "volume 3", "volume 3.x", "volume 03.1"])
def test_malformed_is_400(value: str) -> None:
    with pytest.raises(ApiError) as err:
        VOLUME.negotiate({"openstack-api-version": value})
    assert err.value.status == 400


def test_version_ordering_is_numeric() -> None:
    assert Version.parse("3.10") > Version.parse("3.9")
    assert Version.parse("3.44").at_least("3.27")
    assert not Version.parse("3.27").at_least("3.44")


def test_response_headers_echo_version() -> None:
    assert VOLUME.response_headers(Version(3, 27))["OpenStack-API-Version"] == "volume 3.27"
    h = COMPUTE.response_headers(Version(2, 79))
    assert h["X-OpenStack-Nova-API-Version"] == "2.79"
