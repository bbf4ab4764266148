"""Checkpoint archives: one uncompressed tar of a whole checkpoint folder, hashed while written.

The archive holds the folder's files at its top level (no wrapper directory), so "extract into a
folder, load that folder" is the whole recipe. Intermediate checkpoints keep their
`training_state/` subfolder inside the same archive: it is what a resumed attempt needs, and
`from_pretrained` ignores it. One archive per checkpoint keeps the store, the Checkpoint row and the
download one-to-one; the price is that an intermediate download carries the optimizer state too.
Uncompressed because safetensors barely compress and gzip would cost minutes on large models.

Written by the worker's relay; read back whole by `cached_checkpoint` (a checkpoint used as a
model, by the worker and by the API's score endpoint: one cache folder, `<work_dir>/cache/checkpoints/`)
and by a resumed attempt (extracted into its own folder).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import BinaryIO

from api.core.settings import Settings
from api.core.storage import Storage


class _HashingWriter:
    """A write-only file object that hashes what passes through it."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.out.write(data)


def archive_folder(folder: Path, target: Path) -> str:
    """Write `folder` as a tar at `target`; returns the archive's sha256 (hex)."""
    with open(target, "wb") as out:
        writer = _HashingWriter(out)
        with tarfile.open(fileobj=writer, mode="w|") as tar:  # type: ignore[call-overload]
            for path in sorted(folder.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return writer.digest.hexdigest()


def extract_archive(archive: BinaryIO, target: Path) -> Path:
    """Extract a checkpoint archive into `target` (created; must not exist yet) and return it.

    Extracts next to the target and renames into place, so a folder that exists is complete.
    The `data` filter refuses absolute paths, links out of the folder and device files.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with tarfile.open(fileobj=archive, mode="r|") as tar:
            tar.extractall(tmp, filter="data")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def checkpoint_cache(settings: Settings) -> Path:
    """Where checkpoints used as models are extracted, one folder per checkpoint id, reused afterwards."""
    return settings.resolved_work_dir / "cache" / "checkpoints"


def cached_checkpoint(checkpoint_id: str, storage_key: str, settings: Settings, storage: Storage) -> Path:
    """The checkpoint's folder in the cache, extracted from the store on first use."""
    target = checkpoint_cache(settings) / checkpoint_id
    if target.is_dir():
        return target
    try:
        with storage.open(storage_key) as archive:
            return extract_archive(archive, target)
    except OSError:
        if target.is_dir():  # extracted meanwhile by another job or request
            return target
        raise
