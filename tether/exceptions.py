"""Domain errors raised by the services.  Each carries the HTTP status the
APIs answer with, so the REST layer maps them without knowing each one; the
message is written for the caller: it names the resource, its state and what
would make the request valid."""

from __future__ import annotations


class TetherError(Exception):
    code = 500

    def __init__(self, message: str, **kwargs: str) -> None:
        super().__init__(message)
        self.message = message
        # oslo.messaging rebuilds a remote exception as ``cls(*args, **kwargs)``:
        # keep the constructor's own arguments so it comes back identical
        self.kwargs: dict[str, str] = kwargs or {"message": message}
        self.args = ()

    def __str__(self) -> str:
        return self.message


class NotFound(TetherError):
    code = 404


class VolumeNotFound(NotFound):
    def __init__(self, volume_id: str) -> None:
        super().__init__(f"Volume {volume_id} could not be found.", volume_id=volume_id)
        self.volume_id = volume_id


class AttachmentNotFound(NotFound):
    def __init__(self, attachment_id: str) -> None:
        super().__init__(f"Volume attachment {attachment_id} could not be found.",
                         attachment_id=attachment_id)
        self.attachment_id = attachment_id


class Invalid(TetherError):
    code = 400


class InvalidInput(Invalid):
    pass


class InvalidVolume(Invalid):
    """The volume's state does not allow the request."""


class InvalidAttachment(Invalid):
    pass


class Forbidden(TetherError):
    code = 403


class Conflict(TetherError):
    code = 409


class ServiceUnavailable(TetherError):
    code = 503


class BackendError(TetherError):
    """A storage or hypervisor operation failed on the host side."""

    code = 500


class ServerNotFound(NotFound):
    def __init__(self, server_id: str) -> None:
        super().__init__(f"Instance {server_id} could not be found.", server_id=server_id)


class FlavorNotFound(NotFound):
    def __init__(self, flavor_id: str) -> None:
        super().__init__(f"Flavor {flavor_id} could not be found.", flavor_id=flavor_id)


class VolumeNotAttached(NotFound):
    def __init__(self, server_id: str, volume_id: str) -> None:
        super().__init__(f"Instance {server_id} is not attached to volume {volume_id}.",
                         server_id=server_id, volume_id=volume_id)


class ActionNotFound(NotFound):
    def __init__(self, server_id: str, request_id: str) -> None:
        super().__init__(f"Action for request_id {request_id} on instance {server_id} not "
                         "found.", server_id=server_id, request_id=request_id)


class InstanceLocked(Conflict):
    def __init__(self, server_id: str) -> None:
        super().__init__(f"Instance {server_id} is locked; unlock it (POST /servers/"
                         f"{server_id}/action {{\"unlock\": null}}) first.", server_id=server_id)


class InstanceInvalidState(Conflict):
    pass


class ComputeServiceDown(Conflict):
    def __init__(self, host: str) -> None:
        super().__init__(f"Compute service of {host} is unavailable at this time.", host=host)


class DeviceDetachFailed(TetherError):
    """The guest did not release the disk; the volume was rolled back to in-use."""

    code = 500


class OverLimit(TetherError):
    """Cinder's quota errors: 413 overLimit."""

    code = 413


class QuotaExceeded(Forbidden):
    """Nova's quota errors (and TooManyDiskDevices): 403."""
