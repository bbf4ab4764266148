"""Bounds every request shares, and turning a pydantic ValidationError into DESIGN §4's 422 JSON.

Request bodies are `RequestModel`s: unknown fields are refused (a typo must not train on defaults),
numbers are strict (no bools, no numeric strings, no 1.5 for an integer, no NaN or Infinity) and
strings that reach the database are `SafeStr` (no NUL, which Postgres text and jsonb refuse).
Every integer a client sends is bounded by what the database holds (`DB_INT_MAX`, a BIGINT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.core.errors import InvalidRequest
from trainer.config import SafeStr

__all__ = ["DB_INT_MAX", "Metadata", "RequestModel", "SafeStr", "error_details", "field_path", "invalid_from_pydantic"]

DB_INT_MAX = 2**63 - 1
"""Largest integer a Postgres BIGINT (and SQLite INTEGER) holds; larger ones overflow in the driver."""

METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_CHARS = 64
METADATA_MAX_VALUE_CHARS = 512

Metadata = Annotated[
    dict[
        Annotated[SafeStr, Field(min_length=1, max_length=METADATA_MAX_KEY_CHARS)],
        Annotated[SafeStr, Field(max_length=METADATA_MAX_VALUE_CHARS)],
    ],
    Field(max_length=METADATA_MAX_KEYS),
]
"""Free-form key/values kept with an object, bounded as hosted APIs bound theirs: at most 16 keys,
keys of 1-64 characters, string values of up to 512 characters."""


class RequestModel(BaseModel):
    """Base of every JSON request body."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def field_path(loc: Sequence[int | str], prefix: str | None = None) -> str | None:
    """`("hyperparameters", "beta")` -> "hyperparameters.beta"; list indexes render as [i]."""
    out = prefix or ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or prefix


def error_details(errors: Sequence[Any], prefix: str | None = None) -> list[dict[str, Any]]:
    return [{"field": field_path(e["loc"], prefix), "message": _message(e)} for e in errors]


def _message(error: Any) -> str:
    if error.get("type") == "extra_forbidden":
        return "unknown field (not part of this request; check its spelling)"
    return str(error["msg"])


def invalid_from_pydantic(exc: ValidationError, prefix: str | None = None) -> InvalidRequest:
    """A 422 naming the first bad field (`param`) and listing every problem in `details`."""
    details = error_details(exc.errors(include_url=False), prefix)
    first = details[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return InvalidRequest(message, param=first["field"], details=details)
