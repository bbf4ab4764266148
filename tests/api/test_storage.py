"""The artifact store's two backends, held to the same tests: `file://` and S3 (moto's server on loopback).

Each test takes `storage`, built once per backend; S3-only behaviour (multipart parts, failures of an
unreachable or misconfigured store) has its own tests at the end.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from pathlib import Path

import pytest

from api.core.settings import Settings
from api.core.storage import FileStorage, S3Storage, Storage, StorageUnavailable, storage_from_url
from tests.services import create_bucket, free_port, s3_client

PART = 5 * 1024**2  # S3's smallest part size


def s3_storage(endpoint: str, bucket: str, **options: object) -> S3Storage:
    return S3Storage(
        bucket,
        "some/prefix",
        endpoint_url=endpoint,
        region="us-east-1",
        access_key_id="test",
        secret_access_key="test",
        addressing_style="path",
        part_size=PART,
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "file":
        return FileStorage(tmp_path / "artifacts")
    endpoint = request.getfixturevalue("s3_endpoint")
    return s3_storage(endpoint, create_bucket(endpoint))


def read(storage: Storage, key: str) -> bytes:
    with storage.open(key) as fh:
        return fh.read()


def test_a_stream_put_in_the_store_reads_back_whole_with_its_size_and_sha256(storage: Storage) -> None:
    data = os.urandom(300_000)

    stored = storage.put_stream("datasets/t/ds_1.jsonl", io.BytesIO(data))

    assert (stored.key, stored.bytes, stored.sha256) == ("datasets/t/ds_1.jsonl", len(data), _sha(data))
    assert read(storage, "datasets/t/ds_1.jsonl") == data
    assert storage.size("datasets/t/ds_1.jsonl") == len(data)
    assert storage.exists("datasets/t/ds_1.jsonl") and not storage.exists("datasets/t/ds_2.jsonl")


def test_putting_a_key_again_replaces_the_object(storage: Storage) -> None:
    storage.put_stream("k.bin", io.BytesIO(b"old contents"))
    storage.put_stream("k.bin", io.BytesIO(b"new"))
    assert read(storage, "k.bin") == b"new" and storage.size("k.bin") == 3


def test_an_empty_object_is_stored_and_read_back(storage: Storage) -> None:
    stored = storage.put_stream("empty", io.BytesIO(b""))
    assert stored.bytes == 0 and stored.sha256 == _sha(b"")
    assert read(storage, "empty") == b"" and b"".join(storage.iter_range("empty")) == b""


def test_ranges_yield_exactly_the_bytes_asked_for(storage: Storage) -> None:
    data = os.urandom(3 * 1024**2 + 17)  # more than one read chunk
    storage.put_stream("ckpt.tar", io.BytesIO(data))

    assert b"".join(storage.iter_range("ckpt.tar")) == data
    assert b"".join(storage.iter_range("ckpt.tar", 100, 199)) == data[100:200]
    assert b"".join(storage.iter_range("ckpt.tar", len(data) - 10)) == data[-10:]
    assert b"".join(storage.iter_range("ckpt.tar", 5, 5)) == data[5:6]
    assert b"".join(storage.iter_range("ckpt.tar", 1024**2 - 3, 2 * 1024**2 + 3)) == data[1024**2 - 3 : 2 * 1024**2 + 4]


def test_put_file_copies_and_adopt_moves_the_local_file(storage: Storage, tmp_path: Path) -> None:
    source = tmp_path / "local.bin"
    source.write_bytes(b"x" * 1000)

    copied = storage.put_file("copied.bin", source)
    assert source.exists() and copied.sha256 == _sha(b"x" * 1000) and copied.bytes == 1000

    adopted = storage.adopt("adopted.bin", source, "the sha256 the caller computed")
    assert not source.exists()
    assert (adopted.bytes, adopted.sha256) == (1000, "the sha256 the caller computed")
    assert read(storage, "adopted.bin") == b"x" * 1000


def test_download_to_materialises_a_local_file(storage: Storage, tmp_path: Path) -> None:
    storage.put_stream("datasets/t/ds_1.jsonl.gz", io.BytesIO(b"rows\n" * 100))
    target = tmp_path / "attempt-1" / "data" / "ds_1.jsonl.gz"

    assert storage.download_to("datasets/t/ds_1.jsonl.gz", target) == target

    assert target.read_bytes() == b"rows\n" * 100
    assert [p.name for p in target.parent.iterdir()] == ["ds_1.jsonl.gz"]  # no leftover temporary file


def test_delete_removes_the_object_and_a_missing_key_is_no_error(storage: Storage) -> None:
    storage.put_stream("gone.bin", io.BytesIO(b"bye"))
    storage.delete("gone.bin")
    assert not storage.exists("gone.bin")
    storage.delete("gone.bin")


def test_a_missing_key_raises_file_not_found(storage: Storage, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        storage.size("nope")
    with pytest.raises(FileNotFoundError):
        storage.open("nope")
    with pytest.raises(FileNotFoundError):
        b"".join(storage.iter_range("nope", 0, 10))
    with pytest.raises(FileNotFoundError):
        storage.download_to("nope", tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


@pytest.mark.parametrize("key", ["../outside", "a/../../outside", "/etc/passwd"])
def test_keys_that_leave_the_store_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        storage.put_stream(key, io.BytesIO(b"x"))


def test_a_large_object_goes_up_in_parts_hashed_on_the_way_and_comes_back_intact(
    storage: Storage, tmp_path: Path
) -> None:
    data = os.urandom(9 * 1024**2 + 123)  # over 8 MiB: two 5 MiB parts on S3
    source = tmp_path / "big.tar"
    source.write_bytes(data)

    streamed = storage.put_stream("big-stream.tar", io.BytesIO(data))
    adopted = storage.adopt("big-adopted.tar", source, _sha(data))

    assert (streamed.bytes, streamed.sha256) == (len(data), _sha(data))
    for key in ("big-stream.tar", "big-adopted.tar"):
        assert storage.size(key) == len(data)
        assert hashlib.sha256(read(storage, key)).hexdigest() == _sha(data)
        assert b"".join(storage.iter_range(key, PART - 5, PART + 4)) == data[PART - 5 : PART + 5]
        target = storage.download_to(key, tmp_path / "down" / key)
        assert target.read_bytes() == data
    assert adopted.sha256 == _sha(data)


# ---- S3 only ---------------------------------------------------------------------------------------


def test_on_s3_a_large_object_is_a_multipart_upload_with_the_sha256_kept(s3_endpoint: str, tmp_path: Path) -> None:
    bucket = create_bucket(s3_endpoint)
    storage = s3_storage(s3_endpoint, bucket)
    data = os.urandom(9 * 1024**2)
    source = tmp_path / "big.tar"
    source.write_bytes(data)

    storage.put_stream("streamed.tar", io.BytesIO(data))
    storage.adopt("adopted.tar", source, _sha(data))

    client = s3_client(s3_endpoint)
    for key in ("streamed.tar", "adopted.tar"):
        head = client.head_object(Bucket=bucket, Key=f"some/prefix/{key}")
        assert head["ETag"].strip('"').endswith("-2")  # the ETag of an object uploaded in two parts
    assert client.head_object(Bucket=bucket, Key="some/prefix/adopted.tar")["Metadata"] == {"sha256": _sha(data)}


def test_storage_from_url_builds_the_s3_backend_from_settings(s3_endpoint: str) -> None:
    bucket = create_bucket(s3_endpoint)
    settings = Settings(
        s3_endpoint_url=s3_endpoint,
        s3_region="us-east-1",
        s3_access_key_id="test",
        s3_secret_access_key="test",  # type: ignore[arg-type]
        s3_addressing_style="path",
    )

    storage = storage_from_url(f"s3://{bucket}/deep/prefix/", settings)
    storage.put_stream("datasets/a.jsonl", io.BytesIO(b"{}\n"))

    keys = [o["Key"] for o in s3_client(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["deep/prefix/datasets/a.jsonl"]
    with pytest.raises(ValueError, match="names no bucket"):
        storage_from_url("s3:///prefix", settings)
    with pytest.raises(ValueError, match="unsupported"):
        storage_from_url("gs://bucket/prefix", settings)


def test_a_bucket_that_does_not_exist_is_a_clear_error(s3_endpoint: str) -> None:
    storage = s3_storage(s3_endpoint, "no-such-bucket")

    with pytest.raises(StorageUnavailable, match=r"no-such-bucket.*NoSuchBucket"):
        storage.put_stream("datasets/a.jsonl", io.BytesIO(b"{}\n"))
    with pytest.raises(StorageUnavailable, match="NoSuchBucket"):
        b"".join(storage.iter_range("datasets/a.jsonl"))


def test_an_unreachable_store_fails_within_seconds_with_a_clear_error(tmp_path: Path) -> None:
    storage = s3_storage(f"http://127.0.0.1:{free_port()}", "bucket", timeout_seconds=2.0)  # nothing listens there
    source = tmp_path / "ckpt.tar"
    source.write_bytes(b"x" * 100)

    started = time.monotonic()
    for call in (lambda: storage.size("k"), lambda: storage.adopt("k", source, "0" * 64)):
        with pytest.raises(StorageUnavailable, match=r"s3://bucket/some/prefix could not .*Could not connect"):
            call()
    assert time.monotonic() - started < 20
    assert source.exists()  # a failed adopt keeps the local file


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
