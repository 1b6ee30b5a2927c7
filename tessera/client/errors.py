"""Errors of the Tessera service, the same for the remote and the local client.

Each carries the gRPC status code name it travels as (``code``); the server maps them to status codes
and the client maps status codes back, so ``except NotFound`` works the same in both modes.
"""

from __future__ import annotations

from tessera.errors import TesseraError


class ServiceError(TesseraError):
    """A request the service refused or could not complete."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, field: str | None = None, request_id: str | None = None) -> None:
        self.field = field
        self.message = message
        self.request_id = request_id
        super().__init__(f"{field}: {message}" if field else message)


class InvalidArgument(ServiceError):
    """Bad input; ``field`` names the offending request field (e.g. ``documents[3].id``)."""

    code = "INVALID_ARGUMENT"


class NotFound(ServiceError):
    code = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = "ALREADY_EXISTS"


class FailedPrecondition(ServiceError):
    code = "FAILED_PRECONDITION"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = "PERMISSION_DENIED"


class ResourceExhausted(ServiceError):
    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServiceError):
    code = "DEADLINE_EXCEEDED"


class Unavailable(ServiceError):
    code = "UNAVAILABLE"


class Unimplemented(ServiceError):
    code = "UNIMPLEMENTED"


class Cancelled(ServiceError):
    code = "CANCELLED"


class Internal(ServiceError):
    code = "INTERNAL"


BY_CODE: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Unimplemented,
        Cancelled,
        Internal,
    )
}


def error_for(code: str, message: str, request_id: str | None = None) -> ServiceError:
    """The error class for a status code name (ServiceError itself for codes without a subclass)."""
    cls = BY_CODE.get(code, ServiceError)
    err = cls(message, request_id=request_id)
    if cls is ServiceError:
        err.code = code
    return err
