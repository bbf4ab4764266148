"""Turning a pydantic ValidationError into the 422 error JSON of DESIGN §4 (param names the field)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from api.core.errors import InvalidRequest


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
    return [{"field": field_path(e["loc"], prefix), "message": e["msg"]} for e in errors]


def invalid_from_pydantic(exc: ValidationError, prefix: str | None = None) -> InvalidRequest:
    """A 422 naming the first bad field (`param`) and listing every problem in `details`."""
    details = error_details(exc.errors(include_url=False), prefix)
    first = details[0]
    message = f"{first['field']}: {first['message']}" if first["field"] else first["message"]
    return InvalidRequest(message, param=first["field"], details=details)
