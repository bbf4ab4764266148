"""The artifact store: datasets and checkpoint archives, addressed by key ("datasets/ds_x.jsonl").

`file://` stores under a local directory (the embedded default, or a shared volume). Keys are
written to a temporary name and renamed into place, so a reader never sees half a file.
An S3-compatible backend plugs in behind the same four methods (not implemented yet: set
ALIGND_STORAGE_URL to a shared volume when workers span machines).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

from api.core.settings import get_settings

CHUNK = 1024 * 1024


@dataclass
class Stored:
    key: str
    bytes: int
    sha256: str


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Local path of a key (the worker hands these to the trainer)."""
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, source: Path) -> Stored:
        """Copy a local file into the store, hashing it on the way."""
        with open(source, "rb") as fh:
            return self.put_stream(key, fh)

    def put_stream(self, key: str, stream: BinaryIO) -> Stored:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        digest = hashlib.sha256()
        size = 0
        try:
            with open(tmp, "wb") as out:
                while chunk := stream.read(CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return Stored(key, size, digest.hexdigest())

    def adopt(self, key: str, source: Path, sha256: str) -> Stored:
        """Move an already-hashed local file into the store (no second copy)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)
        return Stored(key, target.stat().st_size, sha256)

    def open(self, key: str) -> BinaryIO:
        return open(self.path(key), "rb")

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end] (inclusive end, as in HTTP Range) of a stored object."""
        with self.open(key) as fh:
            fh.seek(start)
            left = None if end is None else end - start + 1
            while left is None or left > 0:
                chunk = fh.read(CHUNK if left is None else min(CHUNK, left))
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk


def storage_from_url(url: str) -> LocalStorage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalStorage(Path(parsed.path))
    raise ValueError(f"unsupported ALIGND_STORAGE_URL scheme {parsed.scheme!r} (use file:///path)")


@lru_cache
def get_storage() -> LocalStorage:
    return storage_from_url(get_settings().resolved_storage_url)
