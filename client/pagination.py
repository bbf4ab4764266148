"""Lists are pages `{data, has_more, next_cursor}`; iterate_pages walks them lazily."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel

from client.transport import Transport

T = TypeVar("T", bound=BaseModel)


def iterate_pages(transport: Transport, path: str, item: type[T], params: dict[str, Any]) -> Iterator[T]:
    """Every item of a cursor-paginated list, fetching the next page only when the iterator needs it."""
    params = {k: v for k, v in params.items() if v is not None}
    while True:
        page = transport.json("GET", path, params=params)
        for row in page["data"]:
            yield item.model_validate(row)
        if not page.get("has_more") or not page["data"]:
            return
        params["after"] = page.get("next_cursor") or page["data"][-1]["id"]
