"""Streaming multipart/form-data: the file part goes straight into a sink as it arrives.

Starlette's `request.form()` spools a whole upload to a temporary file before the route runs, so a
size limit could only be checked afterwards (a 50 GB upload would fill the disk first). Here each
chunk of the request body is parsed as it arrives and the file part's bytes are handed to a sink
(which hashes, counts and writes them, and raises to stop the upload at the limit).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from api.core.errors import AlignError, InvalidRequest

MAX_FIELD_BYTES = 64 * 1024


class UnsupportedMediaType(AlignError):
    status_code = 415
    code = "unsupported_media_type"


class MalformedMultipart(AlignError):
    status_code = 400
    code = "invalid_multipart"


class Sink(Protocol):
    def write(self, data: bytes) -> None: ...


@dataclass
class ParsedForm:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    """Filename of the file part (None when the request had none)."""


async def stream_multipart(request: Request, file_field: str, sink: Sink) -> ParsedForm:
    """Parse a multipart body, writing the `file_field` part into `sink`; other parts become text fields."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise UnsupportedMediaType(
            "send the file as multipart/form-data (curl -F file=@data.jsonl)", param="Content-Type"
        )
    form = ParsedForm()
    state: dict[str, object] = {}
    header_field = bytearray()
    header_value = bytearray()
    headers: dict[bytes, bytes] = {}

    def on_part_begin() -> None:
        headers.clear()
        state.update(name=None, is_file=False, buf=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        headers[bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == file_field:
            if form.filename is not None:
                raise InvalidRequest(f"send one file per request (several '{file_field}' parts)", param=file_field)
            state["is_file"] = True
            form.filename = disposition.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state.get("is_file"):
            sink.write(data[start:end])
            return
        buf = state["buf"]
        assert isinstance(buf, bytearray)
        buf.extend(data[start:end])
        if len(buf) > MAX_FIELD_BYTES:
            raise InvalidRequest(f"form field {state['name']!r} is too long", param=str(state["name"]))

    def on_part_end() -> None:
        if not state.get("is_file") and state.get("name"):
            buf = state["buf"]
            assert isinstance(buf, bytearray)
            form.fields[str(state["name"])] = buf.decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            if chunk:
                # The sink hashes and writes to disk: keep that off the event loop.
                await run_in_threadpool(parser.write, chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise MalformedMultipart(f"the request body is not valid multipart/form-data: {exc}") from exc
    return form
