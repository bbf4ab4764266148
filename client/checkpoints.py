"""`client.checkpoints`: list, get, download (resumed with Range, sha256 verified, optionally extracted)."""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from client.errors import APIConnectionError, ChecksumMismatchError, InternalServerError, RangeNotSatisfiableError
from client.transport import Transport
from client.types import Checkpoint, DownloadedCheckpoint

ProgressCallback = Callable[[int, int | None], None]
"""Called as bytes arrive: (bytes on disk so far, archive size or None when unknown)."""

CHUNK = 1 << 20


class Checkpoints:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def list(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints (intermediate, final and best)."""
        page = self._t.json("GET", f"/v1/jobs/{job_id}/checkpoints")
        return [Checkpoint.model_validate(row) for row in page["data"]]

    def get(self, checkpoint_id: str) -> Checkpoint:
        return Checkpoint.model_validate(self._t.json("GET", f"/v1/checkpoints/{checkpoint_id}"))

    def download(
        self,
        checkpoint_id: str,
        path: str | os.PathLike[str] | None = None,
        *,
        extract_to: str | os.PathLike[str] | None = None,
        progress: ProgressCallback | None = None,
        max_reconnects: int | None = None,
    ) -> DownloadedCheckpoint:
        """Download the checkpoint's archive (a .tar of a Hugging Face folder) to `path`.

        The bytes go to `<path>.part`; an interrupted transfer (a dropped connection, a 5xx, or an
        earlier call that died) continues from the bytes already there with `Range: bytes=N-`. The
        whole file's sha256 must equal X-Checkpoint-SHA256, else the partial file is removed and
        ChecksumMismatchError is raised. With `extract_to`, the archive is unpacked there with
        tarfile's "data" filter (no absolute paths, no links out of the folder, no devices), ready
        for `from_pretrained(extract_to)`.
        """
        target = Path(path) if path is not None else Path(f"{checkpoint_id}.tar")
        part = target.with_name(target.name + ".part")
        limit = self._t.retry.max_attempts if max_reconnects is None else max_reconnects
        # A .part left by an earlier call is resumed too; if it was not this archive's bytes, the
        # sha256 says so and the download starts once more from zero.
        for last_try in (not part.exists(), True):
            expected = self._transfer(checkpoint_id, part, limit, progress)
            digest = _sha256(part)
            if digest == expected:
                break
            part.unlink()
            if last_try:
                raise ChecksumMismatchError(
                    f"checkpoint {checkpoint_id}: sha256 {digest} differs from the server's {expected}; the "
                    "partial file was removed, download again"
                )
        part.replace(target)
        extracted = None
        if extract_to is not None:
            extracted = Path(extract_to)
            extracted.mkdir(parents=True, exist_ok=True)
            with tarfile.open(target) as tar:
                tar.extractall(extracted, filter="data")
        return DownloadedCheckpoint(target, digest, target.stat().st_size, extracted)

    def _transfer(self, checkpoint_id: str, part: Path, limit: int, progress: ProgressCallback | None) -> str:
        """Bring `part` to the whole archive, resuming after failures; returns the expected sha256."""
        expected: str | None = None
        failures = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                expected = self._fetch(checkpoint_id, part, offset, expected, progress)
                break
            except RangeNotSatisfiableError as exc:
                size = _range_size(exc.response.headers.get("content-range", "") if exc.response else "")
                if size == offset:
                    break  # every byte is already there (an earlier try died before renaming)
                part.unlink(missing_ok=True)  # longer than the archive, or the archive changed
                expected = None
                failures += 1
                if failures > limit:
                    raise
            except (APIConnectionError, InternalServerError):
                failures += 1
                if failures > limit:
                    raise
                self._t.sleep(self._t.retry.backoff(failures))
        return expected or self.get(checkpoint_id).sha256

    def _fetch(
        self, checkpoint_id: str, part: Path, offset: int, expected: str | None, progress: ProgressCallback | None
    ) -> str | None:
        """Append the archive's bytes from `offset` to `part`; returns the announced sha256."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._t.stream("GET", f"/v1/checkpoints/{checkpoint_id}/download", headers=headers) as response:
            announced = response.headers.get("x-checkpoint-sha256")
            if response.status_code == 206 and expected is not None and announced != expected:
                raise RangeNotSatisfiableError(  # the archive changed between two tries: start from zero
                    "the checkpoint archive changed", status_code=416, code="archive_changed"
                )
            resumed = response.status_code == 206
            length = response.headers.get("content-length")
            total = (int(length) + (offset if resumed else 0)) if length else None
            written = offset if resumed else 0
            with open(part, "ab" if resumed else "wb") as fh:
                for chunk in response.iter_bytes():  # as it arrives: a cut keeps what came
                    fh.write(chunk)
                    written += len(chunk)
                    if progress is not None:
                        progress(written, total)
            if total is not None and written != total:
                stopped = f"checkpoint {checkpoint_id}: the download stopped at {written} of {total} bytes"
                raise APIConnectionError(stopped)
            return announced


def _range_size(content_range: str) -> int | None:
    """The size in `Content-Range: bytes */SIZE` (a 416's answer)."""
    _, _, size = content_range.rpartition("/")
    return int(size) if size.isdigit() else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()
