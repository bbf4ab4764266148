"""What every request must satisfy before any route sees it: a bounded body and no NUL characters.

An ASGI middleware, so it holds for every route, present and future:
- A request body may be at most `max_json_body_bytes`: a larger Content-Length is refused at once,
  and the bytes that actually arrive are counted too (a chunked body has no Content-Length). The
  body is read here, at most that many bytes, and handed on to the app. Only the routes that stream
  a multipart upload to disk under their own limit (`max_upload_bytes`, api.core.uploads) are passed
  through untouched; a multipart body sent to any other route is capped like JSON (FastAPI would
  otherwise read it whole into memory).
- NUL characters in the path (404: no id holds one), query string or a header (422) are refused: Postgres text and
  jsonb cannot store them, so an id or key holding one would fail in the driver (a 500) instead.
  NULs inside JSON bodies are refused by the request models (`api.core.validation.SafeStr`).
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl, unquote_to_bytes

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.errors import AlignError, InvalidRequest, NotFound, PayloadTooLarge


class RequestLimits:
    def __init__(self, app: ASGIApp, max_body_bytes: Callable[[], int], streamed_uploads: frozenset[str]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        """Read per request, so settings changed by tests (reset_caches) take effect."""
        self.streamed_uploads = streamed_uploads
        """Paths whose POST streams a multipart upload under its own limit."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        try:
            _refuse_nul(scope, headers)
            if scope["method"] == "POST" and scope["path"] in self.streamed_uploads:
                await self.app(scope, receive, send)
                return
            body = await _read_body(receive, headers, self.max_body_bytes())
        except AlignError as exc:
            await JSONResponse(exc.to_json(), status_code=exc.status_code, headers=exc.headers)(scope, receive, send)
            return
        if body is not None:  # None: the client went away while sending it
            await self.app(scope, _replay(body, receive), send)


def _refuse_nul(scope: Scope, headers: list[tuple[bytes, bytes]]) -> None:
    if "\x00" in scope.get("path", ""):  # no id contains one: this names no resource
        raise NotFound("no such resource (the URL path contains a NUL character)", param="path")
    query = scope.get("query_string", b"")
    if b"\x00" in unquote_to_bytes(query):
        pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace")
        name = next((k for k, v in pairs if "\x00" in k or "\x00" in v), "query").replace("\x00", "\\0")
        raise InvalidRequest(f"{name}: NUL characters are not allowed in the query string (%00)", param=name)
    for name, value in headers:
        if b"\x00" in value:
            header = name.decode("latin-1")
            raise InvalidRequest(f"header {header} must not contain NUL characters", param=header)


async def _read_body(receive: Receive, headers: list[tuple[bytes, bytes]], limit: int) -> bytes | None:
    too_large = PayloadTooLarge(
        f"the request body is larger than this server's limit of {limit} bytes (max_json_body_bytes)", param="body"
    )
    length = next((v for k, v in headers if k.lower() == b"content-length"), None)
    if length is not None and length.strip().isascii() and length.strip().isdigit() and int(length) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
