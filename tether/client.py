"""A small typed client of Tether's REST APIs (used by the CLI and the demo;
the compute service gets its own Block Storage client)."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx

from tether import config


class ApiClientError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class ApiUnreachable(Exception):
    """An API gave no answer at all (refused, timed out, no route ...)."""

    def __init__(self, endpoint: str, reason: str) -> None:
        super().__init__(f"cannot reach {endpoint} ({reason}); is `tether serve` running?")
        self.endpoint = endpoint
        self.reason = reason


def _reason(exc: httpx.TransportError) -> str:
    """``[Errno 111] Connection refused`` -> ``connection refused``."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc).strip().splitlines()[-1] if str(exc)
                  else type(exc).__name__)
    return text[:1].lower() + text[1:]


def _send(http: httpx.Client, endpoint: str, method: str, url: str,
          **kwargs: Any) -> httpx.Response:
    """``http.request`` with a transport failure as :class:`ApiUnreachable`."""
    try:
        return http.request(method, url, **kwargs)
    except httpx.TransportError as exc:
        raise ApiUnreachable(endpoint, _reason(exc)) from exc


def _error(resp: httpx.Response) -> ApiClientError:
    try:
        body = resp.json()
        (fault,) = body.values()
        return ApiClientError(resp.status_code, fault.get("message", str(body)))
    except Exception:
        return ApiClientError(resp.status_code, resp.text[:300])


def _find(rows: list[dict[str, Any]], name_or_id: str, kind: str) -> str:
    found = [r for r in rows if name_or_id in (r["id"], r["name"])]
    if len(found) != 1:
        raise ApiClientError(404, f"{len(found)} {kind}s match {name_or_id!r}")
    ident: str = found[0]["id"]
    return ident


def _wait_status(get: Any, ident: str, statuses: set[str], kind: str,
                 timeout: float) -> dict[str, Any]:
    """Poll ``get(ident)`` until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        row: dict[str, Any] = get(ident)
        if row["status"] in statuses:
            return row
        if time.monotonic() > deadline:
            raise ApiClientError(408, f"{kind} {ident} still {row['status']} after "
                                      f"{timeout:.0f}s")
        time.sleep(0.05)


def _wait_gone(get: Any, ident: str, kind: str, timeout: float) -> None:
    """Poll ``get(ident)`` until it answers 404."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            get(ident)
        except ApiClientError as exc:
            if exc.status == 404:
                return
            raise
        time.sleep(0.05)
    raise ApiClientError(408, f"{kind} {ident} still exists after {timeout:.0f}s")


class _Closing:
    http: httpx.Client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ApiClient(_Closing):
    VOLUME_VERSION = "volume 3.71"

    def __init__(self, volume_url: str, token: str, timeout: float = 30.0) -> None:
        self.volume_url = volume_url.rstrip("/")
        self.http = httpx.Client(timeout=timeout, headers={"X-Auth-Token": token})

    @classmethod
    def from_conf(cls, conf: Any, token: str) -> ApiClient:
        return cls(config.volume_endpoint(conf), token)

    def _volume(self, method: str, path: str, json: Any = None,
                params: dict[str, str] | None = None) -> Any:
        resp = _send(self.http, self.volume_url, method, self.volume_url + path, json=json,
                     params=params, headers={"OpenStack-API-Version": self.VOLUME_VERSION})
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json() if resp.content else None

    # volumes
    def create_volume(self, size: int, name: str | None = None,
                      multiattach: bool = False) -> dict[str, Any]:
        body = {"volume": {"size": size, "name": name, "multiattach": multiattach}}
        vol: dict[str, Any] = self._volume("POST", "/volumes", body)["volume"]
        return vol

    def get_volume(self, volume_id: str) -> dict[str, Any]:
        vol: dict[str, Any] = self._volume("GET", f"/volumes/{volume_id}")["volume"]
        return vol

    def list_volumes(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._volume("GET", "/volumes/detail")["volumes"]
        return rows

    def find_volume(self, name_or_id: str) -> str:
        return _find(self.list_volumes(), name_or_id, "volume")

    def delete_volume(self, volume_id: str) -> None:
        self._volume("DELETE", f"/volumes/{volume_id}")

    def wait_volume(self, volume_id: str, statuses: set[str],
                    timeout: float = 60.0) -> dict[str, Any]:
        return _wait_status(self.get_volume, volume_id, statuses, "volume", timeout)

    def wait_volume_gone(self, volume_id: str, timeout: float = 60.0) -> None:
        _wait_gone(self.get_volume, volume_id, "volume", timeout)

    def create_attachment(self, volume_id: str, instance: str | None,
                          connector: dict[str, Any] | None) -> dict[str, Any]:
        body = {"attachment": {"volume_uuid": volume_id, "instance_uuid": instance,
                               "connector": connector}}
        att: dict[str, Any] = self._volume("POST", "/attachments", body)["attachment"]
        return att

    def complete_attachment(self, attachment_id: str) -> None:
        self._volume("POST", f"/attachments/{attachment_id}/action", {"os-complete": None})

    def delete_attachment(self, attachment_id: str) -> None:
        self._volume("DELETE", f"/attachments/{attachment_id}")


class ComputeClient(_Closing):
    """The Compute API side of the CLI and demo."""

    VERSION = "compute 2.89"

    def __init__(self, compute_url: str, token: str, timeout: float = 30.0) -> None:
        self.url = compute_url.rstrip("/")
        self.http = httpx.Client(timeout=timeout, headers={
            "X-Auth-Token": token, "OpenStack-API-Version": self.VERSION})

    @classmethod
    def from_conf(cls, conf: Any, token: str) -> ComputeClient:
        host = conf.api.bind_host
        if host in ("0.0.0.0", "::"):  # noqa: S104
            host = "127.0.0.1"
        return cls(f"http://{host}:{conf.api.compute_port}/v2.1", token)

    def _call(self, method: str, path: str, json: Any = None) -> Any:
        resp = _send(self.http, self.url, method, self.url + path, json=json)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json() if resp.content else None

    def create_server(self, name: str, flavor: str = "1",
                      image: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "flavorRef": flavor, "networks": "none"}
        if image:
            body["imageRef"] = image
        srv: dict[str, Any] = self._call("POST", "/servers", {"server": body})["server"]
        return srv

    def get_server(self, server_id: str) -> dict[str, Any]:
        srv: dict[str, Any] = self._call("GET", f"/servers/{server_id}")["server"]
        return srv

    def list_servers(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("GET", "/servers/detail")["servers"]
        return rows

    def find_server(self, name_or_id: str) -> str:
        return _find(self.list_servers(), name_or_id, "server")

    def delete_server(self, server_id: str) -> None:
        self._call("DELETE", f"/servers/{server_id}")

    def wait_server(self, server_id: str, statuses: set[str],
                    timeout: float = 60.0) -> dict[str, Any]:
        return _wait_status(self.get_server, server_id, statuses, "server", timeout)

    def wait_server_gone(self, server_id: str, timeout: float = 60.0) -> None:
        _wait_gone(self.get_server, server_id, "server", timeout)

    def attach(self, server_id: str, volume_id: str, device: str | None = None
               ) -> dict[str, Any]:
        body: dict[str, Any] = {"volumeId": volume_id}
        if device:
            body["device"] = device
        att: dict[str, Any] = self._call("POST", f"/servers/{server_id}/os-volume_attachments",
                                         {"volumeAttachment": body})["volumeAttachment"]
        return att

    def detach(self, server_id: str, volume_id: str) -> str:
        """Returns the request id: the instance action to follow."""
        resp = _send(self.http, self.url, "DELETE",
                     f"{self.url}/servers/{server_id}/os-volume_attachments/{volume_id}")
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.headers["x-openstack-request-id"]

    def volume_attachments(self, server_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call(
            "GET", f"/servers/{server_id}/os-volume_attachments")["volumeAttachments"]
        return rows

    def actions(self, server_id: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call(
            "GET", f"/servers/{server_id}/os-instance-actions")["instanceActions"]
        return rows

    def action(self, server_id: str, request_id: str) -> dict[str, Any]:
        act: dict[str, Any] = self._call(
            "GET", f"/servers/{server_id}/os-instance-actions/{request_id}")["instanceAction"]
        return act

    def wait_action(self, server_id: str, request_id: str, timeout: float = 300.0,
                    progress: Any = None) -> dict[str, Any]:
        """Poll the action until it has finished; ``progress(action)`` on each poll."""
        deadline = time.monotonic() + timeout
        while True:
            act = self.action(server_id, request_id)
            if progress is not None:
                progress(act)
            if act.get("finish_time"):
                return act
            if time.monotonic() > deadline:
                raise ApiClientError(408, f"action {request_id} unfinished after {timeout}s")
            time.sleep(0.05)



class ImageClient(_Closing):
    """The Image API (Glance v2) side of the CLI and demo."""

    def __init__(self, image_url: str, token: str, timeout: float = 30.0) -> None:
        self.url = image_url.rstrip("/")
        self.http = httpx.Client(timeout=timeout, headers={"X-Auth-Token": token})

    @classmethod
    def from_conf(cls, conf: Any, token: str) -> ImageClient:
        return cls(config.image_endpoint(conf), token)

    def _call(self, path: str) -> Any:
        resp = _send(self.http, self.url, "GET", self.url + path)
        if resp.status_code >= 400:
            raise _error(resp)
        return resp.json()

    def list_images(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call("/v2/images")["images"]
        return rows

    def get_image(self, image_id: str) -> dict[str, Any]:
        image: dict[str, Any] = self._call(f"/v2/images/{image_id}")
        return image

    def find_image(self, name_or_id: str) -> str:
        return _find(self.list_images(), name_or_id, "image")
