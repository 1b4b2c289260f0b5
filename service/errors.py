"""One error path: every failure the service reports is a `ServiceError` with an HTTP status, a stable code,
a message that says where the problem is, and optional structured details (marshmallow's nested error dict)."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadRequest(ServiceError):
    """The body or a header cannot be read at all: malformed JSON, bad encoding, bad binary framing."""

    status = 400
    code = "bad_request"


class InvalidInput(ServiceError):
    """The request is readable but its content breaks the schema (shape, types, limits, unknown fields)."""

    status = 422
    code = "invalid_input"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request is valid but the state it builds on has moved on (a stream's version was unloaded, a sequence
    was advanced by another request)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class NotReady(ServiceError):
    status = 503
    code = "not_ready"


class Overloaded(ServiceError):
    """The model's queue is full: answer at once and tell the client when to come back."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class Timeout(ServiceError):
    status = 504
    code = "timeout"
