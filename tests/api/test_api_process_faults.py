"""The API process killed (SIGKILL) mid-upload and mid-download, against a real server on Postgres.

An upload cut short leaves no dataset listed and nothing in the store; a download cut short resumes
from the byte it stopped at with a Range header, and the bytes put together match the sha256 the
server announced.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.core.storage import FileStorage, storage_from_url
from tests.conftest import TenantKey
from tests.services import free_port
from tests.worker.conftest import add_dataset, add_job, short_preference_pairs

REPO = Path(__file__).resolve().parents[2]


class ApiProcess:
    """`uvicorn api.main:create_app` on a fixed port, so a restarted server answers at the same address."""

    def __init__(self, cwd: Path) -> None:
        self.port, self.cwd = free_port(), cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(self.port)]
        self.process = subprocess.Popen(
            command, cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the API server did not start within 60 s")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    server = ApiProcess(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


def store_files(settings: Settings, prefix: str) -> list[Path]:
    storage = storage_from_url(settings.resolved_storage_url, settings)
    assert isinstance(storage, FileStorage)
    folder = storage.root / prefix
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def multipart(chunks: Callable[[], Iterator[bytes]], boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="pairs.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from chunks()
    yield f"\r\n--{boundary}--\r\n".encode()


def test_an_upload_cut_by_the_api_being_killed_leaves_no_dataset_listed_and_nothing_in_the_store(
    api: ApiProcess, tenant: TenantKey, settings: Settings
) -> None:
    rows = short_preference_pairs()
    repeats = (8 * 1024**2) // len(rows)  # 8 MiB, sent in slices
    killed: list[bool] = []

    def slow_rows() -> Iterator[bytes]:
        for i in range(repeats):
            yield rows
            if i == repeats // 2:  # half-way: the server is killed while it is receiving
                api.kill()
                killed.append(True)

    boundary = uuid.uuid4().hex
    headers = {**tenant.headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    with pytest.raises(httpx.TransportError):
        httpx.post(f"{api.url}/v1/datasets", content=multipart(slow_rows, boundary), headers=headers, timeout=60)
    assert killed

    api.start()
    listed = httpx.get(f"{api.url}/v1/datasets", headers=tenant.headers, timeout=10)
    assert listed.status_code == 200 and listed.json()["data"] == []
    assert store_files(settings, "datasets") == []

    # The same upload, not cut, is listed whole.
    response = httpx.post(
        f"{api.url}/v1/datasets", files={"file": ("pairs.jsonl", rows * 4)}, headers=tenant.headers, timeout=60
    )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == hashlib.sha256(rows * 4).hexdigest()
    assert [d["id"] for d in httpx.get(f"{api.url}/v1/datasets", headers=tenant.headers).json()["data"]] == [
        response.json()["id"]
    ]


def test_a_download_cut_by_the_api_being_killed_resumes_with_range_and_matches_its_sha256(
    api: ApiProcess, tenant: TenantKey, settings: Settings, session: Session
) -> None:
    storage = storage_from_url(settings.resolved_storage_url, settings)
    archive = os.urandom(24 * 1024**2)
    dataset = add_dataset(session, storage, tenant.id)
    job = add_job(session, tenant.id, dataset.id, "org/hub-model")
    stored = storage.put_stream(f"checkpoints/{job.id}/step-00000005-intermediate.tar", io.BytesIO(archive))
    checkpoint = Checkpoint(
        tenant_id=tenant.id, job_id=job.id, step=5, kind="intermediate",
        bytes=stored.bytes, sha256=stored.sha256, storage_key=stored.key,
    )  # fmt: skip
    session.add(checkpoint)
    session.commit()
    url = f"{api.url}/v1/checkpoints/{checkpoint.id}/download"

    received = bytearray()
    with pytest.raises(httpx.TransportError), httpx.stream("GET", url, headers=tenant.headers, timeout=30) as first:
        assert first.status_code == 200
        announced = first.headers["X-Checkpoint-SHA256"]
        for chunk in first.iter_bytes(64 * 1024):
            received += chunk
            if len(received) >= len(archive) // 3 and api.process is not None and api.process.poll() is None:
                api.kill()  # mid-download
    assert 0 < len(received) < len(archive)

    api.start()
    headers = {**tenant.headers, "Range": f"bytes={len(received)}-"}
    rest = httpx.get(url, headers=headers, timeout=60)

    assert rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes {len(received)}-{len(archive) - 1}/{len(archive)}"
    assert hashlib.sha256(bytes(received) + rest.content).hexdigest() == announced == checkpoint.sha256
