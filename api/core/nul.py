"""NUL characters never reach the database through the URL.

Postgres text cannot hold NUL (psycopg raises before the query runs), so an id or cursor with `%00` in
it was a 500 on every lookup. No id, cursor or filter of this API contains one, so the request is
refused before routing: a NUL in the path names no resource (404), one in the query string is an
invalid parameter (422). Request bodies are validated by their schemas.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send


def _error(status: int, code: str, message: str, param: str | None) -> tuple[int, bytes]:
    body: dict[str, object] = {"error": {"code": code, "message": message, "param": param, "details": []}}
    return status, json.dumps(body).encode()


class RefuseNul:
    """ASGI middleware: 404 for a NUL in the path, 422 for one in the query string."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = None
        if scope["type"] == "http":
            query = scope.get("query_string", b"").decode("latin-1")
            if "\x00" in scope["path"]:
                refused = _error(404, "not_found", "no such resource (the path contains a NUL character)", None)
            elif "%00" in query or "\x00" in query:
                pairs = parse_qsl(query, keep_blank_values=True, encoding="utf-8", errors="replace")
                param = next((k for k, v in pairs if "\x00" in k or "\x00" in v), None)
                name = param.replace("\x00", "\\0") if param is not None else None
                refused = _error(422, "invalid_request", f"{name or 'query'}: NUL characters are not allowed", name)
        if refused is None:
            await self.app(scope, receive, send)
            return
        status, body = refused
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
