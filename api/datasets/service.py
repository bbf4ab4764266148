"""Datasets: streamed in, hashed, validated line by line, stored; listed, previewed, deleted.

An upload is written to a staging file (hashing and counting as the bytes arrive, stopping at
the size limit), then validated line by line from that file with trainer.formats (the same rules
the trainer reads with), and only then moved into the artifact store and recorded. On any error
the staging files are removed: an invalid upload leaves no row and no file.

Validation counts decompressed bytes as it reads: a .jsonl.gz is refused (413) once it expands past
`max_dataset_bytes` or, past 8 MiB, more than `max_compression_ratio` times the compressed bytes read
so far, so a bomb costs a few MiB of inflating, not its full size. Lines are found with C-level
scans of 1 MiB blocks, so blank lines cost about what gzip costs per byte, not a Python call each.

What is stored is the data decompressed and normalised (one row per line, blank lines dropped, every
line ending in a newline; the trainer reads it as plain .jsonl) plus a sidecar index (`<key>.idx`:
the byte offset of every STRIDE-th row), so a page of rows is one small ranged read wherever it
lies. The dataset's `bytes`/`sha256` still describe the file as uploaded. Datasets stored before
the index existed (gzip or plain, no sidecar) are read from the start, as before.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import struct
import sys
import uuid
import zlib
from array import array
from collections.abc import Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from api.core.db import utcnow
from api.core.errors import AlignError, Conflict, InvalidRequest, NotFound
from api.core.ids import new_id
from api.core.pagination import fetch_page
from api.core.settings import Settings
from api.core.storage import Storage
from api.datasets.models import Dataset, DatasetTokenLengths
from api.datasets.preview import PreviewTask
from api.jobs.models import LIVE_STATUSES, Job
from api.models_dir import references
from trainer.formats import FORMATS, RowError, detect_format, parse_row

MAX_DETAILS = 100
MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_ROWS = 2**31 - 1
"""datasets.rows is a 32-bit integer column."""
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 1024 * 1024
RATIO_GRACE_BYTES = 8 * 1024 * 1024
"""The compression ratio is only judged past this many decompressed bytes (small files vary)."""
STRIDE = 100
"""The row index records the offset of every STRIDE-th row: a page reads at most STRIDE + limit rows."""
INDEX_MAGIC = b"ALIGNDX1"
_INDEX_HEADER = struct.Struct("<8sQ")  # magic, stride; then one little-endian uint64 offset per entry
_NOT_BLANK = re.compile(rb"[^ \t\r\n\x0b\x0c]")  # bytes.strip()'s whitespace


class DatasetInvalid(InvalidRequest):
    code = "invalid_dataset"


class NotGzip(DatasetInvalid):
    code = "invalid_gzip"


class UploadTooLarge(AlignError):
    status_code = 413
    code = "payload_too_large"


class DatasetInUse(Conflict):
    code = "dataset_in_use"


class DatasetNotFound(NotFound):
    pass


# ---- staging an upload ---------------------------------------------------------------------------


class StagedUpload:
    """A file being received: written to the staging folder, hashed and counted, capped at `limit` bytes."""

    def __init__(self, staging_dir: Path, limit: int) -> None:
        staging_dir.mkdir(parents=True, exist_ok=True)
        self.path = staging_dir / f"upload-{uuid.uuid4().hex}.part"
        self.limit = limit
        self.bytes = 0
        self._digest = hashlib.sha256()
        self._fh: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 (closed in close/discard)

    def write(self, data: bytes) -> None:
        self.bytes += len(data)
        if self.bytes > self.limit:
            raise UploadTooLarge(
                f"the file is larger than this server's limit of {self.limit} bytes (ALIGND_MAX_UPLOAD_BYTES); "
                "compress it (.jsonl.gz) or split it",
                param="file",
            )
        assert self._fh is not None
        self._digest.update(data)
        self._fh.write(data)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def staging_dir(settings: Settings) -> Path:
    return settings.data_dir.resolve() / "uploads"


# ---- reading lines -------------------------------------------------------------------------------


def _too_long(lineno: int) -> DatasetInvalid:
    return DatasetInvalid(
        f"line {lineno} is longer than {MAX_LINE_BYTES} bytes",
        param="file",
        details=[{"line": lineno, "field": None, "message": "line too long"}],
    )


def iter_lines(chunks: Iterable[bytes]) -> Generator[tuple[int, bytes], None, None]:
    """(line number, line without its newline) of each non-blank line in a stream of byte blocks.

    Runs of blank lines are skipped by regex/count scans in C; only non-blank lines cost a Python
    step: ~9 ns per blank byte, about what inflating it costs. Measured on the shared 2-core dev box:
    a 100 KB gzip of 100 MiB of newlines took 40.9 s to validate with a readline() per line, 1.0-1.6 s
    now with no ratio limit, 0.1 s under the default ratio limit (refused ~13 MiB in).
    """
    carry = b""
    lineno = 0
    for chunk in chunks:
        data = carry + chunk if carry else chunk
        last = data.rfind(b"\n")
        if last < 0:
            carry = data
            if len(carry) > MAX_LINE_BYTES:
                raise _too_long(lineno + 1)
            continue
        carry = data[last + 1 :]
        pos = 0
        while (found := _NOT_BLANK.search(data, pos, last)) is not None:
            # pos is a line start; the line holding `found` starts after the last newline before it.
            start = max(pos, data.rfind(b"\n", pos, found.start()) + 1)
            lineno += data.count(b"\n", pos, start) + 1
            end = data.find(b"\n", found.start())
            if end - start > MAX_LINE_BYTES:
                raise _too_long(lineno)
            yield lineno, data[start:end]
            pos = end + 1
        lineno += data.count(b"\n", pos, last + 1)
    if carry.strip():
        if len(carry) > MAX_LINE_BYTES:
            raise _too_long(lineno + 1)
        yield lineno + 1, carry


# ---- validation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    """Decompressed bytes allowed."""
    max_ratio: float
    """Decompressed / compressed bytes allowed past RATIO_GRACE_BYTES."""

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(settings.resolved_max_dataset_bytes, settings.max_compression_ratio)


@dataclass
class Validated:
    kind: str
    format: str
    rows: int
    compressed: bool


class Normalised:
    """The validated rows written out one per line, hashed, with the sparse row index built on the way."""

    def __init__(self, staging_dir: Path) -> None:
        self.path = staging_dir / f"rows-{uuid.uuid4().hex}.part"
        self.bytes = 0
        self.offsets = array("Q")
        self._digest = hashlib.sha256()
        self._fh: IO[bytes] | None = open(self.path, "wb")  # noqa: SIM115 (closed in close/discard)

    def add(self, row: int, line: bytes) -> None:
        if row % STRIDE == 0:
            self.offsets.append(self.bytes)
        assert self._fh is not None
        for part in (line, b"\n"):
            self._fh.write(part)
            self._digest.update(part)
        self.bytes += len(line) + 1

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def index(self) -> bytes:
        offsets = array("Q", self.offsets)
        if sys.byteorder != "little":
            offsets.byteswap()
        return _INDEX_HEADER.pack(INDEX_MAGIC, STRIDE) + offsets.tobytes()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def discard(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)


def _decompressed(raw: IO[bytes], compressed: bool, limits: Limits) -> Iterator[bytes]:
    """1 MiB blocks of the file's content, refusing a decompression bomb as soon as it shows."""
    stream: IO[bytes] = gzip.GzipFile(fileobj=raw) if compressed else raw  # type: ignore[assignment]
    total = 0
    while chunk := stream.read(CHUNK):
        total += len(chunk)
        if total > limits.max_bytes:
            what = "decompresses to" if compressed else "is"
            raise UploadTooLarge(
                f"the dataset {what} more than this server's limit of {limits.max_bytes} bytes "
                "(ALIGND_MAX_DATASET_BYTES); split it into several datasets",
                param="file",
            )
        # raw.tell() is how much of the gzip stream has been read so far (a little ahead of inflation).
        if compressed and total > RATIO_GRACE_BYTES and total > limits.max_ratio * raw.tell():
            raise UploadTooLarge(
                f"the file expands more than {limits.max_ratio:g} times when decompressed, which real "
                "datasets do not (ALIGND_MAX_COMPRESSION_RATIO); remove runs of blank or repeated lines, "
                "or upload it uncompressed",
                param="file",
            )
        yield chunk


def validate_file(
    path: Path,
    filename: str | None = None,
    declared_format: str | None = None,
    *,
    limits: Limits,
    out: Normalised | None = None,
) -> Validated:
    """Check every line of a staged .jsonl / .jsonl.gz file; raises DatasetInvalid with line details.

    All rows must share one format: the declared one, or the first valid row's. Reads 1 MiB at a
    time; stops collecting after the first MAX_DETAILS problems. Valid rows go to `out` when given.
    """
    if declared_format is not None and declared_format not in FORMATS:
        raise InvalidRequest(f"unknown format {declared_format!r}; one of: {', '.join(FORMATS)}", param="format")
    details: list[dict[str, Any]] = []
    fmt = declared_format
    rows = 0
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
        raw.seek(0)
        if filename and filename.lower().endswith(".gz") and not compressed:
            raise NotGzip(f"{filename!r} is named .gz but is not gzip-compressed: upload it as .jsonl", param="file")
        try:
            for lineno, line in iter_lines(_decompressed(raw, compressed, limits)):
                if rows == MAX_ROWS:
                    raise UploadTooLarge(f"the dataset has more than {MAX_ROWS} rows; split it", param="file")
                problem = _check_line(lineno, line, fmt, declared=declared_format is not None)
                if isinstance(problem, str):
                    fmt = fmt or problem
                    if out is not None and not details:
                        out.add(rows, line)
                else:
                    details.append(problem)
                    if len(details) >= MAX_DETAILS:
                        break
                rows += 1
        except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as exc:
            raise NotGzip(
                f"the file is not valid gzip ({exc}); upload it uncompressed or re-compress it", param="file"
            ) from exc
    if details:
        more = " (showing the first 100)" if len(details) >= MAX_DETAILS else ""
        first = details[0]
        raise DatasetInvalid(
            f"{len(details)} invalid row(s){more}; first: line {first['line']}: {first['message']}",
            param="file",
            details=details,
        )
    if rows == 0 or fmt is None:
        raise DatasetInvalid("the file is empty: expected one JSON object per line", param="file")
    return Validated(kind=FORMATS[fmt], format=fmt, rows=rows, compressed=compressed)


def _check_line(lineno: int, raw: bytes, fmt: str | None, *, declared: bool) -> str | dict[str, Any]:
    """The line's format when it is valid, else a detail {line, field, message}."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return {
            "line": lineno,
            "field": None,
            "message": f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start}); save the file as UTF-8",
        }
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return {"line": lineno, "field": None, "message": f"not valid JSON: {exc}"}
    try:
        if fmt is not None and not declared and (detected := detect_format(row)) != fmt:
            raise RowError(
                None,
                f"row is in {detected} format ({FORMATS[detected]}) but the file's first row is {fmt} "
                f"({FORMATS[fmt]}); every row must have the same format",
            )
        row_format = fmt or detect_format(row)
        parse_row(row, row_format)
    except RowError as exc:
        return {"line": lineno, "field": exc.field, "message": exc.message}
    return row_format


# ---- create / read / delete ----------------------------------------------------------------------


def check_upload(
    staged: StagedUpload, filename: str | None, declared_format: str | None, *, limits: Limits
) -> Validated:
    """Validate a staged upload and throw it away (the pre-flight)."""
    try:
        staged.close()
        return validate_file(staged.path, filename, declared_format, limits=limits)
    finally:
        staged.discard()


def index_key(storage_key: str) -> str:
    return f"{storage_key}.idx"


def create_dataset(
    session: Session,
    storage: Storage,
    tenant_id: str,
    staged: StagedUpload,
    *,
    name: str | None,
    filename: str | None,
    declared_format: str | None,
    limits: Limits,
) -> Dataset:
    """Validate a staged upload, store its rows (normalised, indexed) and record it; nothing is kept on failure."""
    keys: list[str] = []
    normalised = Normalised(staged.path.parent)
    try:
        staged.close()
        result = validate_file(staged.path, filename, declared_format, limits=limits, out=normalised)
        normalised.close()
        dataset_id = new_id("ds")
        key = f"datasets/{tenant_id}/{dataset_id}.jsonl"
        keys += [key, index_key(key)]
        storage.adopt(key, normalised.path, normalised.sha256)
        storage.put_stream(index_key(key), io.BytesIO(normalised.index()))
        dataset = Dataset(
            id=dataset_id,
            tenant_id=tenant_id,
            name=(name or _stem(filename) or dataset_id)[:300],
            kind=result.kind,
            format=result.format,
            rows=result.rows,
            bytes=staged.bytes,
            sha256=staged.sha256,
            storage_key=key,
        )
        session.add(dataset)
        session.commit()
        return dataset
    except BaseException:
        session.rollback()
        for stored in keys:
            storage.delete(stored)
        raise
    finally:
        staged.discard()
        normalised.discard()


def _stem(filename: str | None) -> str | None:
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".jsonl", ".json"):
        base = base.removesuffix(suffix)
    return base or None


def get_dataset(session: Session, tenant_id: str, dataset_id: str, *, for_update: bool = False) -> Dataset:
    query = select(Dataset).where(
        Dataset.id == dataset_id, Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None)
    )
    if for_update:
        query = query.with_for_update()
    dataset = session.execute(query).scalar_one_or_none()
    if dataset is None:
        raise DatasetNotFound(f"no dataset {dataset_id!r}", param="dataset_id")
    return dataset


def list_datasets(session: Session, tenant_id: str, *, limit: int, after: str | None) -> tuple[list[Dataset], bool]:
    query = select(Dataset).where(Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
    return fetch_page(session, Dataset, tenant_id, query, after, limit)


def preview_rows(storage: Storage, dataset: Dataset, *, offset: int, limit: int) -> tuple[list[Any], bool]:
    """Rows [offset, offset+limit) as stored (blank lines skipped); 422 for an offset past the end."""
    if offset > dataset.rows:
        raise InvalidRequest(f"offset {offset} is past the end of the dataset ({dataset.rows} rows)", param="offset")
    if storage.exists(index_key(dataset.storage_key)):
        lines = _indexed_lines(storage, dataset, offset, limit)
    else:  # stored before the row index existed: read from the start
        lines = _lines_from_start(storage, dataset.storage_key, offset, limit)
    rows = [orjson.loads(line) for line in lines]
    return rows, offset + len(rows) < dataset.rows


def _read(storage: Storage, key: str, start: int, end: int) -> bytes:
    return b"".join(storage.iter_range(key, start, end))


def _indexed_lines(storage: Storage, dataset: Dataset, offset: int, limit: int) -> Iterator[bytes]:
    """Read only the bytes between the index entries around rows [offset, offset+limit)."""
    index = index_key(dataset.storage_key)
    magic, stride = _INDEX_HEADER.unpack(_read(storage, index, 0, _INDEX_HEADER.size - 1))
    if magic != INDEX_MAGIC or stride < 1:
        raise RuntimeError(f"{index} is not a row index")
    stop = min(offset + limit, dataset.rows)
    if offset >= stop:
        return
    entries = -(-dataset.rows // stride)
    first, after = offset // stride, -(-stop // stride)  # the entries at or before offset and at or after stop
    last = min(after, entries - 1)
    raw = _read(storage, index, _INDEX_HEADER.size + 8 * first, _INDEX_HEADER.size + 8 * last + 7)
    offsets = struct.unpack(f"<{last - first + 1}Q", raw)
    end = offsets[after - first] - 1 if after < entries else None
    skip = offset - first * stride
    with closing(iter_lines(storage.iter_range(dataset.storage_key, offsets[0], end))) as lines:
        for _, line in islice(lines, skip, skip + stop - offset):
            yield line


def _lines_from_start(storage: Storage, key: str, offset: int, limit: int) -> Iterator[bytes]:
    def chunks() -> Iterator[bytes]:
        if not key.endswith(".gz"):  # older uploads were stored as sent, .gz keys for gzip ones
            yield from storage.iter_range(key, 0, None)
            return
        with storage.open(key) as fh, gzip.GzipFile(fileobj=fh) as gz:
            yield from iter(partial(gz.read, CHUNK), b"")

    with closing(iter_lines(chunks())) as lines:
        for _, line in islice(lines, offset, offset + limit):
            yield line


def delete_dataset(session: Session, storage: Storage, tenant_id: str, dataset_id: str) -> None:
    """Remove the file and hide the dataset; 409 while a queued or running job, or a pipeline stage
    not yet started, uses it."""
    dataset = get_dataset(session, tenant_id, dataset_id, for_update=True)
    live = session.scalars(
        select(Job.id)
        .where(
            Job.status.in_(LIVE_STATUSES),
            or_(Job.dataset_id == dataset.id, Job.eval_dataset_id == dataset.id),
        )
        .limit(1)
    ).first()
    if live is not None:
        session.rollback()
        raise DatasetInUse(f"dataset {dataset_id} is used by job {live}, which is not finished; cancel it first")
    from api.pipelines.service import pipeline_waiting_for  # pipelines build on datasets, not the reverse

    waiting = pipeline_waiting_for(session, tenant_id, dataset.id)
    if waiting is not None:
        session.rollback()
        raise DatasetInUse(
            f"dataset {dataset_id} is used by a stage of pipeline {waiting} that has not started yet; "
            "cancel the pipeline first"
        )
    dataset.deleted_at = utcnow()
    session.execute(delete(DatasetTokenLengths).where(DatasetTokenLengths.dataset_id == dataset.id))
    session.commit()
    storage.delete(dataset.storage_key)
    storage.delete(index_key(dataset.storage_key))


def preview_task(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant_id: str,
    dataset_id: str,
    model: str,
    *,
    offset: int,
    limit: int,
    max_length: int,
    max_prompt_length: int,
) -> tuple[PreviewTask, bool]:
    """What the preview child needs (the dataset's rows, the model checked for this tenant), and has_more."""
    if max_prompt_length >= max_length:
        raise InvalidRequest("max_prompt_length must be smaller than max_length", param="max_prompt_length")
    try:
        dataset = get_dataset(session, tenant_id, dataset_id)
        source = references.check(session, settings, tenant_id, model, "model")
        fmt = dataset.format
    finally:
        session.close()  # rendering takes a while; hold no connection meanwhile
    rows, has_more = preview_rows(storage, dataset, offset=offset, limit=limit)
    return PreviewTask(source, rows, fmt, max_length, max_prompt_length), has_more
