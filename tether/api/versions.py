"""Version discovery documents and microversion negotiation.

Each API declares its :class:`ApiVersions`: the service type clients name in
``OpenStack-API-Version: <type> X.Y``, extra legacy headers (Nova's
``X-OpenStack-Nova-API-Version``) and the supported range.  A request without
a header gets the minimum; ``latest`` the maximum; anything outside the range
is 406, anything malformed 400.  The chosen version is echoed back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Any

from tether.api.errors import ApiError

_VERSION_RE = re.compile(r"^([1-9]\d*)\.([0-9]\d*)$")


@total_ordering
@dataclass(frozen=True)
class Version:
    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> Version:
        m = _VERSION_RE.match(text.strip())
        if not m:
            raise ValueError(text)
        return cls(int(m.group(1)), int(m.group(2)))

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return (self.major, self.minor) < (other.major, other.minor)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    def at_least(self, text: str) -> bool:
        return self >= Version.parse(text)


@dataclass(frozen=True)
class ApiVersions:
    service_type: str  # "compute" / "volume"
    version_id: str  # "v2.1" / "v3.0"
    path: str  # "/v2.1" / "/v3"
    minimum: Version
    maximum: Version
    updated: str
    legacy_header: str | None = None

    def negotiate(self, headers: dict[str, str]) -> Version:
        """Pick the microversion of a request (headers with lower-case keys)."""
        requested = None
        value = headers.get("openstack-api-version")
        if value:
            requested = self._from_standard_header(value)
        if requested is None and self.legacy_header:
            requested = headers.get(self.legacy_header.lower()) or None
        if requested is None:
            return self.minimum
        if requested.strip().lower() == "latest":
            return self.maximum
        try:
            version = Version.parse(requested)
        except ValueError:
            raise ApiError(400, f"Invalid API version '{requested}': expected X.Y or "
                                "'latest'.") from None
        if not self.minimum <= version <= self.maximum:
            raise ApiError(406, f"Version {version} is not supported by the API. Minimum is "
                                f"{self.minimum} and maximum is {self.maximum}.")
        return version

    def _from_standard_header(self, value: str) -> str | None:
        # "compute 2.79" or "volume 3.27, compute 2.1"
        for item in value.split(","):
            parts = item.strip().split()
            if len(parts) == 2 and parts[0].lower() == self.service_type:
                return parts[1]
        return None

    def response_headers(self, version: Version) -> dict[str, str]:
        headers = {
            "OpenStack-API-Version": f"{self.service_type} {version}",
            "Vary": "OpenStack-API-Version",
        }
        if self.legacy_header:
            headers[self.legacy_header] = str(version)
            headers["Vary"] += ", " + self.legacy_header
        return headers

    def document(self, base_url: str) -> dict[str, Any]:
        """One entry of the discovery document."""
        return {
            "id": self.version_id,
            "status": "CURRENT",
            "version": str(self.maximum),
            "min_version": str(self.minimum),
            "updated": self.updated,
            "links": [{"rel": "self", "href": f"{base_url.rstrip('/')}{self.path}/"}],
            "media-types": [{
                "base": "application/json",
                "type": f"application/vnd.openstack.{self.service_type}+json;"
                        f"version={self.version_id.lstrip('v').split('.')[0]}",
            }],
        }


VOLUME = ApiVersions("volume", "v3.0", "/v3", Version(3, 0), Version(3, 71),
                     "2023-08-31T00:00:00Z")
COMPUTE = ApiVersions("compute", "v2.1", "/v2.1", Version(2, 1), Version(2, 96),
                      "2013-07-23T11:33:21Z", legacy_header="X-OpenStack-Nova-API-Version")
# Glance has no microversions: one version
IMAGE = ApiVersions("image", "v2.0", "/v2", Version(2, 0), Version(2, 0),
                    "2013-06-01T00:00:00Z")
