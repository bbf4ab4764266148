"""The artifact store: datasets and checkpoint archives, addressed by key ("datasets/ds_x.jsonl").

`Storage` is the interface (DESIGN §2); `storage_from_url` picks the backend from ALIGND_STORAGE_URL:

- `file:///path` (`FileStorage`): a local directory (the embedded default, or a shared volume).
  Keys are written to a temporary name and renamed into place, so a reader never sees half a file.
- `s3://bucket/prefix` (`S3Storage`): S3-compatible object storage through boto3 (AWS, MinIO, R2,
  Ceph); endpoint, region, credentials and part size come from the ALIGND_S3_* settings. Large
  objects go up as multipart uploads (boto3's managed transfer), sha256 computed on the way.

The trainer never sees the store: the worker downloads what it reads (`download_to`) and uploads
what it writes (`adopt`). A missing key raises FileNotFoundError on both backends; an unreachable
or misconfigured store raises `StorageUnavailable` (HTTP 503) instead of hanging.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast
from urllib.parse import urlparse

from api.core.errors import AlignError
from api.core.settings import Settings, get_settings

CHUNK = 1024 * 1024


@dataclass
class Stored:
    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Listed:
    key: str
    modified_at: datetime
    """When the object was last written (UTC)."""


class StorageUnavailable(AlignError):
    """The artifact store cannot be reached or refused the request (not a missing key)."""

    status_code = 503
    code = "storage_unavailable"


class Storage(Protocol):
    """What api/ and worker/ may ask of the artifact store; keys are relative, '/'-separated."""

    def put_file(self, key: str, source: Path) -> Stored:
        """Copy a local file into the store (the file stays), hashing it on the way."""
        ...

    def put_stream(self, key: str, stream: BinaryIO) -> Stored:
        """Store everything `stream` yields, hashing it on the way (never whole in memory)."""
        ...

    def adopt(self, key: str, source: Path, sha256: str) -> Stored:
        """Move an already-hashed local file into the store; `source` is gone afterwards."""
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream of the object (read sequentially; close it)."""
        ...

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Yield bytes [start, end] (inclusive end, as in HTTP Range) of a stored object."""
        ...

    def size(self, key: str) -> int: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def list_objects(self, prefix: str) -> Iterator[Listed]:
        """Every object under the folder `prefix` (any depth), with when it was written."""
        ...

    def download_to(self, key: str, target: Path) -> Path:
        """Materialise the object as the local file `target` (complete or absent); returns it."""
        ...


class FileStorage:
    """The `file://` backend: one file per key under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"FileStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        """Local path of a key, refusing keys that would leave the root."""
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise ValueError(f"storage key escapes the store: {key!r}")
        return path

    def put_file(self, key: str, source: Path) -> Stored:
        with open(source, "rb") as fh:
            return self.put_stream(key, fh)

    def put_stream(self, key: str, stream: BinaryIO) -> Stored:
        target = self._path(key)
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
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), target)
        return Stored(key, target.stat().st_size, sha256)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
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

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_objects(self, prefix: str) -> Iterator[Listed]:
        """Includes the temporary `.part` files of writes that never finished (their writer died)."""
        root = self.root.resolve()
        for path in sorted(self._path(prefix).rglob("*")):
            try:
                if path.is_file():
                    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                    yield Listed(path.relative_to(root).as_posix(), modified)
            except FileNotFoundError:  # deleted since the walk saw it
                continue

    def download_to(self, key: str, target: Path) -> Path:
        """A hard link where the store shares the filesystem (no copy of a large dataset), else a copy."""
        source = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            if not source.is_file():
                raise FileNotFoundError(f"{self!r}: no object {key!r}")
            try:
                os.link(source, tmp)
            except OSError:  # another filesystem, or links not allowed
                shutil.copyfile(source, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


class _HashingReader:
    """A read-only, non-seekable view of a stream that hashes and counts what is read through it.

    Non-seekable on purpose: boto3's managed transfer then reads it once, front to back, and keeps
    each part in memory until it is uploaded (so retried parts are not read again).
    """

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()
        self.bytes = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.digest.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False


class S3Storage:
    """The `s3://bucket/prefix` backend on boto3: one object per key under `prefix/`."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        part_size: int = 64 * 1024**2,
        timeout_seconds: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                connect_timeout=timeout_seconds,
                read_timeout=timeout_seconds,
                retries={"max_attempts": max_attempts, "mode": "standard"},
                s3={"addressing_style": addressing_style},
            ),
        )
        self.transfer = TransferConfig(multipart_threshold=part_size, multipart_chunksize=part_size)

    def __repr__(self) -> str:
        return f"S3Storage('s3://{self.bucket}/{self.prefix}')"

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, key: str, fn: Any, /, **kwargs: Any) -> Any:
        """Run one S3 operation; a missing key -> FileNotFoundError, any other failure -> StorageUnavailable."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{self!r}: no object {key!r}") from exc
            raise StorageUnavailable(
                f"the artifact store s3://{self.bucket}/{self.prefix} refused to {what} {key!r}: "
                f"{code} {error.get('Message', '')}".strip()
            ) from exc
        except (BotoCoreError, Boto3Error) as exc:
            raise StorageUnavailable(
                f"the artifact store s3://{self.bucket}/{self.prefix} could not {what} {key!r}: {exc}"
            ) from exc

    def put_file(self, key: str, source: Path) -> Stored:
        with open(source, "rb") as fh:
            return self.put_stream(key, fh)

    def put_stream(self, key: str, stream: BinaryIO) -> Stored:
        reader = _HashingReader(stream)
        self._call(
            "upload",
            key,
            self.client.upload_fileobj,
            Fileobj=reader,
            Bucket=self.bucket,
            Key=self._key(key),
            Config=self.transfer,
        )
        return Stored(key, reader.bytes, reader.digest.hexdigest())

    def adopt(self, key: str, source: Path, sha256: str) -> Stored:
        size = source.stat().st_size
        self._call(
            "upload",
            key,
            self.client.upload_file,
            Filename=str(source),
            Bucket=self.bucket,
            Key=self._key(key),
            ExtraArgs={"Metadata": {"sha256": sha256}},
            Config=self.transfer,
        )
        source.unlink()
        return Stored(key, size, sha256)

    def _get(self, key: str, byte_range: str | None = None) -> Any:
        args = {"Bucket": self.bucket, "Key": self._key(key)}
        if byte_range is not None:
            args["Range"] = byte_range
        return self._call("read", key, self.client.get_object, **args)["Body"]

    def open(self, key: str) -> BinaryIO:
        # Buffered, so readline() and small reads do not become one tiny socket read each.
        return cast(BinaryIO, io.BufferedReader(self._get(key), CHUNK))

    def iter_range(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        # No Range header for the whole object: S3 answers 416 to any range of an empty one.
        whole = start == 0 and end is None
        body = self._get(key, None if whole else f"bytes={start}-{'' if end is None else end}")
        with body:
            yield from body.iter_chunks(CHUNK)

    def size(self, key: str) -> int:
        head = self._call("read", key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except FileNotFoundError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def list_objects(self, prefix: str) -> Iterator[Listed]:
        strip = len(f"{self.prefix}/") if self.prefix else 0
        args = {"Bucket": self.bucket, "Prefix": self._key(prefix).rstrip("/") + "/"}
        while True:
            page = self._call("list", prefix, self.client.list_objects_v2, **args)
            for item in page.get("Contents", []):
                yield Listed(item["Key"][strip:], item["LastModified"].astimezone(UTC))
            if not page.get("IsTruncated"):
                return
            args["ContinuationToken"] = page["NextContinuationToken"]

    def download_to(self, key: str, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            self._call(
                "download",
                key,
                self.client.download_file,
                Bucket=self.bucket,
                Key=self._key(key),
                Filename=str(tmp),
                Config=self.transfer,
            )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def storage_from_url(url: str, settings: Settings | None = None) -> Storage:
    """The store named by `url` (file:///path or s3://bucket/prefix); S3 options from `settings`."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStorage(Path(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"ALIGND_STORAGE_URL {url!r} names no bucket (use s3://bucket/prefix)")
        s = settings or get_settings()
        secret = s.s3_secret_access_key.get_secret_value() if s.s3_secret_access_key else None
        return S3Storage(
            parsed.netloc,
            parsed.path,
            endpoint_url=s.s3_endpoint_url,
            region=s.s3_region,
            access_key_id=s.s3_access_key_id,
            secret_access_key=secret,
            addressing_style=s.s3_addressing_style,
            part_size=s.s3_part_size_bytes,
            timeout_seconds=s.s3_timeout_seconds,
            max_attempts=s.s3_max_attempts,
        )
    raise ValueError(
        f"unsupported ALIGND_STORAGE_URL scheme {parsed.scheme!r} (use file:///path or s3://bucket/prefix)"
    )


@lru_cache
def get_storage() -> Storage:
    settings = get_settings()
    return storage_from_url(settings.resolved_storage_url, settings)
