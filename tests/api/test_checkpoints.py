"""Checkpoint download: the stored archive streamed with Content-Length, its sha256, and Range support."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.storage import get_storage
from api.jobs.models import Job
from tests.api.helpers import assert_error, real_lines, upload_ok
from tests.conftest import TenantKey
from tests.services import free_port


def make_archive(folder: Path) -> bytes:
    """A tar of a small Hugging Face-like folder, files at its top level (the worker's layout)."""
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "alignd.json").write_text('{"job_id": "x"}')
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 300)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buf.getvalue()


@pytest.fixture
def checkpoint(
    client: TestClient, auth: dict[str, str], tenant: TenantKey, session: Session, tmp_path: Path
) -> dict[str, Any]:
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 2))
    job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=ds["id"], hyperparameters={})
    session.add(job)
    session.flush()
    folder = tmp_path / "final"
    folder.mkdir()
    archive = make_archive(folder)
    key = f"checkpoints/{job.id}/final.tar"
    stored = get_storage().put_stream(key, io.BytesIO(archive))
    row = Checkpoint(
        tenant_id=tenant.id,
        job_id=job.id,
        step=7,
        kind="final",
        bytes=stored.bytes,
        sha256=stored.sha256,
        storage_key=key,
        metrics={"loss": 0.4},
    )
    session.add(row)
    session.commit()
    return {"id": row.id, "job_id": job.id, "archive": archive}


def test_get_checkpoint_shows_public_fields_only(client: TestClient, auth: dict[str, str], checkpoint: dict) -> None:
    body = client.get(f"/v1/checkpoints/{checkpoint['id']}", headers=auth).json()
    assert body["sha256"] == hashlib.sha256(checkpoint["archive"]).hexdigest()
    assert body["bytes"] == len(checkpoint["archive"]) and body["step"] == 7 and body["kind"] == "final"
    assert "storage_key" not in body and "tenant_id" not in body


@pytest.mark.parametrize(("backend", "store"), [("postgres", "file"), ("sqlite", "file"), ("postgres", "s3")])
def test_download_streams_the_archive_with_length_and_sha256_and_it_extracts(
    client: TestClient, auth: dict[str, str], checkpoint: dict, tmp_path: Path, backend: str, store: str
) -> None:
    resp = client.get(f"/v1/checkpoints/{checkpoint['id']}/download", headers=auth)
    assert resp.status_code == 200
    assert resp.content == checkpoint["archive"]
    assert resp.headers["content-length"] == str(len(checkpoint["archive"]))
    assert resp.headers["x-checkpoint-sha256"] == hashlib.sha256(resp.content).hexdigest()
    assert resp.headers["accept-ranges"] == "bytes"
    assert resp.headers["content-type"] == "application/x-tar"
    out = tmp_path / "extracted"
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        tar.extractall(out, filter="data")
    assert (out / "config.json").is_file() and (out / "model.safetensors").stat().st_size == 256 * 300


@pytest.mark.parametrize("store", ["file", "s3"])
def test_range_requests_return_206_with_the_bytes_asked_for(
    client: TestClient, auth: dict[str, str], checkpoint: dict, store: str
) -> None:
    archive, url = checkpoint["archive"], f"/v1/checkpoints/{checkpoint['id']}/download"
    size = len(archive)
    resp = client.get(url, headers={**auth, "Range": "bytes=100-199"})
    assert resp.status_code == 206 and resp.content == archive[100:200]
    assert resp.headers["content-range"] == f"bytes 100-199/{size}" and resp.headers["content-length"] == "100"
    # Resume from an offset to the end, and the last N bytes.
    resp = client.get(url, headers={**auth, "Range": f"bytes={size - 10}-"})
    assert resp.status_code == 206 and resp.content == archive[-10:]
    resp = client.get(url, headers={**auth, "Range": "bytes=-25"})
    assert resp.status_code == 206 and resp.content == archive[-25:]
    # An end past the file is clipped; the sha256 header always describes the whole archive.
    resp = client.get(url, headers={**auth, "Range": f"bytes=0-{size + 1000}"})
    assert resp.status_code == 206 and resp.content == archive
    assert resp.headers["x-checkpoint-sha256"] == hashlib.sha256(archive).hexdigest()
    # Pieces put back together are the archive.
    pieces = [client.get(url, headers={**auth, "Range": f"bytes={i}-{i + 4095}"}).content for i in range(0, size, 4096)]
    assert b"".join(pieces) == archive


def test_unsatisfiable_range_is_416(client: TestClient, auth: dict[str, str], checkpoint: dict) -> None:
    size = len(checkpoint["archive"])
    resp = client.get(f"/v1/checkpoints/{checkpoint['id']}/download", headers={**auth, "Range": f"bytes={size}-"})
    assert_error(resp, 416, "range_not_satisfiable")
    assert resp.headers["content-range"] == f"bytes */{size}"


def test_unknown_checkpoint_is_404(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.get("/v1/checkpoints/ckpt_nope/download", headers=auth), 404, "not_found")


@pytest.mark.parametrize("store", ["s3"])
def test_a_download_while_the_store_is_unreachable_is_a_503_not_a_hang(
    client: TestClient, auth: dict[str, str], checkpoint: dict, store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches

    monkeypatch.setenv("ALIGND_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("ALIGND_S3_TIMEOUT_SECONDS", "2")
    reset_caches()

    started = time.monotonic()
    resp = client.get(f"/v1/checkpoints/{checkpoint['id']}/download", headers=auth)

    assert_error(resp, 503, "storage_unavailable")
    assert "could not read" in resp.json()["error"]["message"]
    assert time.monotonic() - started < 20
