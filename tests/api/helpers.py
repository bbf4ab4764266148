"""Small helpers shared by the API tests: uploads, error assertions, "nothing was stored" checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.settings import Settings
from api.datasets.models import Dataset
from tests.shared_data import shared_data

MODEL = "tiny-llama"
"""The model the API tests put in the server's model directory (tests/api/conftest.py)."""


def real_lines(name: str, n: int) -> bytes:
    """The first n lines of a real dataset in data/, as bytes."""
    out = []
    with open(shared_data(name), "rb") as fh:
        for _ in range(n):
            out.append(fh.readline())
    return b"".join(out)


def upload(
    client: TestClient,
    headers: dict[str, str],
    content: bytes,
    filename: str = "data.jsonl",
    *,
    path: str = "/v1/datasets",
    **fields: str,
) -> httpx.Response:
    return client.post(path, headers=headers, files={"file": (filename, content)}, data=fields)


def upload_ok(
    client: TestClient, headers: dict[str, str], content: bytes, filename: str = "data.jsonl"
) -> dict[str, Any]:
    resp = upload(client, headers, content, filename)
    assert resp.status_code == 201, resp.text
    return resp.json()


def assert_error(
    resp: httpx.Response, status: int, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """The response is DESIGN §4's error JSON with this status (and code / param when given)."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "param", "details"}, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def stored_files(settings: Settings) -> list[Path]:
    """Every file in the artifact store and the upload staging folder."""
    roots = [Path(settings.resolved_storage_url.removeprefix("file://")), settings.data_dir / "uploads"]
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def assert_no_dataset_stored(session: Session, settings: Settings) -> None:
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(Dataset)) == 0
    assert stored_files(settings) == []


def dataset_row(session: Session, tenant_id: str) -> Dataset:
    """A dataset row whose file does not exist, added and flushed: it only satisfies a job's foreign key."""
    dataset = Dataset(
        tenant_id=tenant_id,
        name="pairs.jsonl",
        kind="preference",
        format="openai_dpo",
        rows=1,
        bytes=1,
        sha256="0" * 64,
        storage_key="datasets/none",
    )
    session.add(dataset)
    session.flush()
    return dataset
