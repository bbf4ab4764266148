"""One root error class; each domain declares its subclasses next to the service raising them.

A single handler (api.main) renders every AlignError as DESIGN §4's error JSON,
`{"error": {"code", "message", "param", "details"}}` (the `ErrorResponse` model, which the OpenAPI
schema shows for every error status), with the error's `headers` on the response.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel


class ErrorBody(BaseModel):
    code: str
    """Machine-readable error code, e.g. invalid_request, not_found, payload_too_large."""
    message: str
    """What went wrong, for people."""
    param: str | None
    """The request field, parameter or header at fault (dotted path, list indexes as [i]), if any."""
    details: list[Any]
    """More problems (e.g. every invalid field, or every invalid dataset line)."""


class ErrorResponse(BaseModel):
    """Every 4xx/5xx response of the API has this shape (DESIGN §4)."""

    error: ErrorBody


class AlignError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        details: list[Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or []
        self.headers: dict[str, str] = dict(headers or {})
        """Response headers that go with the error (e.g. Content-Range on a 416)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "param": self.param,
                "details": self.details,
            }
        }


class NotFound(AlignError):
    status_code = 404
    code = "not_found"


class Conflict(AlignError):
    status_code = 409
    code = "conflict"


class Unauthorized(AlignError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str, *, param: str | None = None, details: list[Any] | None = None) -> None:
        super().__init__(message, param=param, details=details, headers={"WWW-Authenticate": 'Bearer realm="alignd"'})


class InvalidRequest(AlignError):
    status_code = 422
    code = "invalid_request"


class PayloadTooLarge(AlignError):
    status_code = 413
    code = "payload_too_large"
