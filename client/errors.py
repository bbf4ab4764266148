"""One exception tree for everything the client raises.

    AlignError
    ├── APIConnectionError          the server could not be reached (after the retries)
    │   └── APITimeoutError
    ├── ChecksumMismatchError       a download's sha256 differs from X-Checkpoint-SHA256
    ├── JobTimeoutError             `jobs.wait(timeout=...)` ran out before the job finished
    └── APIError                    the server answered an error: status, code, message, param, details
        ├── BadRequestError (400)   ├── AuthenticationError (401)   ├── PermissionDeniedError (403)
        ├── NotFoundError (404)     ├── ConflictError (409)         ├── PayloadTooLargeError (413)
        ├── UnsupportedMediaTypeError (415)  ├── RangeNotSatisfiableError (416)
        ├── InvalidRequestError (422)        ├── RateLimitError (429)
        └── InternalServerError (5xx)        └── ServiceUnavailableError (503)

`code`, `message`, `param` and `details` are the API's error object (api/README.md, "Errors").
"""

from __future__ import annotations

from typing import Any

import httpx


class AlignError(Exception):
    """Base of every error the alignd client raises."""


class APIConnectionError(AlignError):
    """The request never got an answer (connection refused or reset, DNS, a dropped stream)."""


class APITimeoutError(APIConnectionError):
    """The server did not answer in time."""


class ChecksumMismatchError(AlignError):
    """A downloaded checkpoint's sha256 is not the one the server announced."""


class JobTimeoutError(AlignError):
    """`jobs.wait()` gave up before the job reached a final status."""


class APIError(AlignError):
    """An error answer from the API: `{"error": {"code", "message", "param", "details"}}`."""

    status_code: int = 0

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str,
        param: str | None = None,
        details: list[Any] | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.code = code
        self.param = param
        self.details = details or []
        self.response = response

    def __str__(self) -> str:
        where = f" (param: {self.param})" if self.param else ""
        return f"{self.status_code} {self.code}: {self.message}{where}"


class BadRequestError(APIError):
    """400: e.g. a body that is not JSON."""


class AuthenticationError(APIError):
    """401: a missing, unknown or revoked API key."""


class PermissionDeniedError(APIError):
    """403."""


class NotFoundError(APIError):
    """404: no such resource for this tenant (another tenant's resources are 404 too)."""


class ConflictError(APIError):
    """409: e.g. cancelling a finished job, deleting a dataset a live job uses."""


class PayloadTooLargeError(APIError):
    """413: the upload (or its decompressed size) is over the server's limit."""


class UnsupportedMediaTypeError(APIError):
    """415."""


class RangeNotSatisfiableError(APIError):
    """416: a Range outside the archive."""


class InvalidRequestError(APIError):
    """422: validation failed; `param` names the field, `details` lists line-level dataset errors."""


class RateLimitError(APIError):
    """429."""


class InternalServerError(APIError):
    """5xx (after the retries)."""


class ServiceUnavailableError(InternalServerError):
    """503: the server (or what it depends on) is not ready (after the retries)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    416: RangeNotSatisfiableError,
    422: InvalidRequestError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def error_from_response(response: httpx.Response) -> APIError:
    """The exception for an error response (its body must have been read)."""
    status = response.status_code
    cls = _BY_STATUS.get(status) or (InternalServerError if status >= 500 else APIError)
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return cls(
            str(error.get("message") or response.reason_phrase),
            status_code=status,
            code=str(error.get("code") or "error"),
            param=error.get("param"),
            details=error.get("details") or [],
            response=response,
        )
    text = response.text.strip()[:500] or response.reason_phrase
    return cls(text, status_code=status, code=f"http_{status}", response=response)
