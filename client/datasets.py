"""`client.datasets`: upload (with progress), validate, list, get, rows, delete."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from client.pagination import iterate_pages
from client.transport import Transport
from client.types import Dataset, DatasetRows, DatasetValidation

ProgressCallback = Callable[[int, int | None], None]
"""Called as bytes go out: (bytes sent so far, total bytes or None when unknown)."""

FileInput = str | os.PathLike[str] | IO[bytes]


class _CountingReader:
    """A binary file that reports how much of it has been read (httpx's multipart reads it in chunks).

    httpx rewinds the file (seek(0)) each time it renders the body, so a retried upload counts from 0.
    """

    def __init__(self, file: IO[bytes], total: int | None, callback: ProgressCallback | None) -> None:
        self._file, self._total, self._callback = file, total, callback
        self._start = file.tell() if file.seekable() else 0
        self._sent = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(size)
        self._sent += len(chunk)
        if self._callback is not None and chunk:
            self._callback(self._sent, self._total)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._file.seek(offset + (self._start if whence == 0 else 0), whence) - self._start
        self._sent = max(position, 0)
        return position

    def tell(self) -> int:
        return self._file.tell() - self._start

    def fileno(self) -> int:
        raise OSError("no file number: the size is measured by seeking")  # so httpx measures from _start


def _size(file: IO[bytes]) -> int | None:
    if not file.seekable():
        return None
    here = file.tell()
    end = file.seek(0, os.SEEK_END)
    file.seek(here)
    return end - here


class Datasets:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def upload(
        self,
        file: FileInput,
        *,
        name: str | None = None,
        format: str | None = None,
        filename: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> Dataset:
        """Upload a .jsonl or .jsonl.gz file; a file with bad lines raises InvalidRequestError (details: lines)."""
        return Dataset.model_validate(self._send("/v1/datasets", file, name, format, filename, progress, False))

    def validate(
        self,
        file: FileInput,
        *,
        format: str | None = None,
        filename: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> DatasetValidation:
        """The upload's checks, nothing stored (a pre-flight)."""
        data = self._send("/v1/datasets/validate", file, None, format, filename, progress, True)
        return DatasetValidation.model_validate(data)

    def list(self, *, page_size: int = 100) -> Iterator[Dataset]:
        """Every dataset, newest first (pages are fetched as the iterator goes)."""
        return iterate_pages(self._t, "/v1/datasets", Dataset, {"limit": page_size})

    def get(self, dataset_id: str) -> Dataset:
        return Dataset.model_validate(self._t.json("GET", f"/v1/datasets/{dataset_id}"))

    def rows(self, dataset_id: str, *, offset: int = 0, limit: int = 10) -> DatasetRows:
        """Rows `offset` .. `offset + limit` as uploaded (limit 1-100)."""
        params = {"offset": offset, "limit": limit}
        return DatasetRows.model_validate(self._t.json("GET", f"/v1/datasets/{dataset_id}/rows", params=params))

    def delete(self, dataset_id: str) -> None:
        """Delete a dataset (ConflictError while a queued or running job uses it)."""
        self._t.request("DELETE", f"/v1/datasets/{dataset_id}")

    def _send(
        self,
        path: str,
        file: FileInput,
        name: str | None,
        format: str | None,
        filename: str | None,
        progress: ProgressCallback | None,
        idempotent: bool,
    ) -> Any:
        fields = {k: v for k, v in (("name", name), ("format", format)) if v is not None}
        if isinstance(file, str | os.PathLike):
            with open(file, "rb") as fh:
                return self._post(path, fh, filename or Path(file).name, fields, progress, idempotent)
        filename = filename or Path(getattr(file, "name", "data.jsonl")).name
        return self._post(path, file, filename, fields, progress, idempotent)

    def _post(
        self,
        path: str,
        fh: IO[bytes],
        filename: str,
        fields: dict[str, str],
        progress: ProgressCallback | None,
        idempotent: bool,
    ) -> Any:
        reader = _CountingReader(fh, _size(fh), progress)

        def build() -> dict[str, Any]:
            reader.seek(0)
            return {"files": {"file": (filename, reader, "application/octet-stream")}}

        return self._t.json("POST", path, data=fields, build=build, idempotent=idempotent)
