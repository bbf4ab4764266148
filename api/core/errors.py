"""One root error class; each domain declares its subclasses next to the service raising them.

A single handler (api.main) renders every AlignError as DESIGN §4's error JSON:
`{"error": {"code", "message", "param", "details"}}`.
"""

from __future__ import annotations

from typing import Any


class AlignError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, param: str | None = None, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.details = details or []

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


class InvalidRequest(AlignError):
    status_code = 422
    code = "invalid_request"
