"""Lists are `{"data": [...], "has_more": bool}` paginated with `limit` and an opaque `after` cursor (DESIGN §4).

Lists are ordered newest first by (created_at, id). A page also carries `next_cursor`: the last
item's id, base64url-encoded so clients treat it as opaque. The last item's plain id is accepted as
`after` too (as in Stripe's API). The item is looked up again, so a cursor stays valid.
A service reads a page with `fetch_page`; its router answers with `page_of`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from api.core.errors import InvalidRequest

T = TypeVar("T")
Row = TypeVar("Row")

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Items per page (1-100).")]
AfterQuery = Annotated[str | None, Query(description="Opaque cursor: the `next_cursor` of the previous page.")]


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None = None
    """Pass as `after` to get the next page (null on the last page)."""


def encode_cursor(item_id: str) -> str:
    return base64.urlsafe_b64encode(item_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        item_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("invalid cursor: pass the next_cursor of a previous page", param="after") from exc
    if "\x00" in item_id:  # names no item, and Postgres text cannot hold it
        raise InvalidRequest("invalid cursor: pass the next_cursor of a previous page", param="after")
    return item_id


def fetch_page(
    session: Session, model: type[Row], tenant_id: str, query: Select[Any], after: str | None, limit: int
) -> tuple[list[Row], bool]:
    """One page of `query`'s rows (see page_query) and whether more follow."""
    rows = list(session.scalars(page_query(session, model, tenant_id, query, after, limit)))
    return rows[:limit], len(rows) > limit


def page_of(rows: Sequence[Any], has_more: bool, public: Callable[[Any], T]) -> Page[T]:
    """The response of a fetch_page: each row as its public schema, and the cursor of the next page."""
    return Page(
        data=[public(row) for row in rows],
        has_more=has_more,
        next_cursor=encode_cursor(rows[-1].id) if has_more else None,
    )


def page_query(
    session: Session, model: Any, tenant_id: str, query: Select[Any], after: str | None, limit: int
) -> Select[Any]:
    """`query` (filtered to the tenant) newest first, after the cursor, plus one row to tell has_more."""
    if after is not None:
        cursor = session.get(model, after)
        if cursor is None:
            try:
                cursor = session.get(model, decode_cursor(after))
            except InvalidRequest:
                cursor = None
        if cursor is None or cursor.tenant_id != tenant_id:
            raise InvalidRequest("invalid cursor: pass the next_cursor of a previous page", param="after")
        query = query.where(tuple_(model.created_at, model.id) < tuple_(cursor.created_at, cursor.id))
    return query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
