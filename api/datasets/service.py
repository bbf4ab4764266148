"""Datasets: streamed in, hashed, validated line by line, stored; listed, previewed, deleted.

An upload is written to a staging file (hashing and counting as the bytes arrive, stopping at
the size limit), then validated line by line from that file with trainer.formats (the same rules
the trainer reads with), and only then moved into the artifact store and recorded. On any error
the staging file is removed: an invalid upload leaves no row and no file.
"""

from __future__ import annotations

import gzip
import hashlib
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from api.core.db import utcnow
from api.core.errors import AlignError, Conflict, InvalidRequest, NotFound
from api.core.ids import new_id
from api.core.pagination import page_query
from api.core.settings import Settings
from api.core.storage import Storage
from api.datasets.models import Dataset
from api.jobs.models import LIVE_STATUSES, Job
from trainer.formats import FORMATS, RowError, detect_format, parse_row

MAX_DETAILS = 100
MAX_LINE_BYTES = 16 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


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


# ---- validation ----------------------------------------------------------------------------------


@dataclass
class Validated:
    kind: str
    format: str
    rows: int
    compressed: bool


def _open_lines(path: Path, filename: str | None) -> tuple[IO[bytes], bool]:
    fh = open(path, "rb")  # noqa: SIM115 (returned to the caller)
    compressed = fh.read(2) == GZIP_MAGIC
    fh.seek(0)
    if filename and filename.lower().endswith(".gz") and not compressed:
        fh.close()
        raise NotGzip(f"{filename!r} is named .gz but is not gzip-compressed: upload it as .jsonl", param="file")
    if compressed:
        return gzip.GzipFile(fileobj=fh), True  # type: ignore[return-value]
    return fh, False


def _lines(fh: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    lineno = 0
    while True:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DatasetInvalid(
                f"line {lineno} is longer than {MAX_LINE_BYTES} bytes",
                param="file",
                details=[{"line": lineno, "field": None, "message": "line too long"}],
            )
        yield lineno, raw


def validate_file(path: Path, filename: str | None = None, declared_format: str | None = None) -> Validated:
    """Check every line of a staged .jsonl / .jsonl.gz file; raises DatasetInvalid with line details.

    All rows must share one format: the declared one, or the first valid row's. Reads one line at a
    time; stops collecting after the first MAX_DETAILS problems.
    """
    if declared_format is not None and declared_format not in FORMATS:
        raise InvalidRequest(f"unknown format {declared_format!r}; one of: {', '.join(FORMATS)}", param="format")
    details: list[dict[str, Any]] = []
    fmt = declared_format
    rows = 0
    fh, compressed = _open_lines(path, filename)
    try:
        with fh:
            for lineno, raw in _lines(fh):
                if not raw.strip():
                    continue
                rows += 1
                problem = _check_line(lineno, raw, fmt, declared=declared_format is not None)
                if isinstance(problem, str):
                    fmt = fmt or problem
                else:
                    details.append(problem)
                    if len(details) >= MAX_DETAILS:
                        break
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


def check_upload(staged: StagedUpload, filename: str | None, declared_format: str | None) -> Validated:
    """Validate a staged upload and throw it away (the pre-flight)."""
    try:
        staged.close()
        return validate_file(staged.path, filename, declared_format)
    finally:
        staged.discard()


def create_dataset(
    session: Session,
    storage: Storage,
    tenant_id: str,
    staged: StagedUpload,
    *,
    name: str | None,
    filename: str | None,
    declared_format: str | None,
) -> Dataset:
    """Validate a staged upload, move it into the store and record it; nothing is kept on failure."""
    key = None
    try:
        staged.close()
        result = validate_file(staged.path, filename, declared_format)
        dataset_id = new_id("ds")
        key = f"datasets/{tenant_id}/{dataset_id}.jsonl" + (".gz" if result.compressed else "")
        storage.adopt(key, staged.path, staged.sha256)
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
        if key is not None:
            storage.delete(key)
        raise
    finally:
        staged.discard()


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
    items = list(session.scalars(page_query(session, Dataset, tenant_id, query, after, limit)))
    return items[:limit], len(items) > limit


def preview_rows(storage: Storage, dataset: Dataset, *, offset: int, limit: int) -> tuple[list[Any], bool]:
    """Rows [offset, offset+limit) as stored (blank lines skipped), read line by line."""
    rows: list[Any] = []
    with storage.open(dataset.storage_key) as stored:
        fh: IO[bytes] = gzip.GzipFile(fileobj=stored) if dataset.storage_key.endswith(".gz") else stored  # type: ignore[assignment]
        index = 0
        for _, raw in _lines(fh):
            if not raw.strip():
                continue
            if index >= offset + limit:
                return rows, True
            if index >= offset:
                rows.append(orjson.loads(raw))
            index += 1
    return rows, False


def delete_dataset(session: Session, storage: Storage, tenant_id: str, dataset_id: str) -> None:
    """Remove the file and hide the dataset; 409 while a queued or running job uses it."""
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
    dataset.deleted_at = utcnow()
    session.commit()
    storage.delete(dataset.storage_key)
