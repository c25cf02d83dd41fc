"""Domain errors that the API turns into `{"error": {"code", "message", "details"}}` responses."""

from __future__ import annotations

from typing import Any


class LoaError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, details: Any = None, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        if code:
            self.code = code


class NotFound(LoaError):
    status_code = 404
    code = "not_found"


class Conflict(LoaError):
    status_code = 409
    code = "conflict"


class Invalid(LoaError):
    status_code = 422
    code = "validation_error"


class Forbidden(LoaError):
    status_code = 403
    code = "forbidden"


class TooLarge(LoaError):
    status_code = 413
    code = "payload_too_large"
