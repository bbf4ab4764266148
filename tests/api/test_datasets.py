"""Datasets: real files in every format, and every bad upload leaves nothing behind."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.settings import Settings
from api.datasets.models import Dataset
from api.jobs.models import Job
from tests.api.helpers import assert_error, assert_no_dataset_stored, real_lines, stored_files, upload, upload_ok
from tests.conftest import TenantKey

REAL_FILES = [
    ("orca-dpo-pairs.openai-dpo.jsonl", "preference", "openai_dpo"),
    ("hh-rlhf-harmless-base.jsonl", "preference", "implicit_prompt"),
    ("gsm8k-train.jsonl", "prompt", "prompt"),
    ("gsm8k-openai-chat-sft.jsonl", "sft", "messages"),
    ("alpaca-en-demo.jsonl", "sft", "alpaca"),
]


@pytest.mark.parametrize(("name", "kind", "fmt"), REAL_FILES)
def test_upload_of_real_data_detects_kind_and_format_and_stores_the_file_with_its_sha256(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, name: str, kind: str, fmt: str
) -> None:
    content = real_lines(name, 40)
    body = upload_ok(client, auth, content, name)
    assert (body["kind"], body["format"], body["rows"]) == (kind, fmt, 40)
    assert body["bytes"] == len(content)
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    assert body["name"] == name.removesuffix(".jsonl")
    assert set(body) == {"id", "name", "kind", "format", "rows", "bytes", "sha256", "created_at"}
    row = session.get(Dataset, body["id"])
    assert row is not None
    [stored] = stored_files(settings)
    assert stored.read_bytes() == content


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_gzip_upload_is_sniffed_validated_and_stored_compressed(
    client: TestClient, auth: dict[str, str], settings: Settings, backend: str
) -> None:
    content = gzip.compress(real_lines("orca-dpo-pairs.openai-dpo.jsonl", 25))
    body = upload_ok(client, auth, content, "orca.jsonl.gz")
    assert (body["kind"], body["rows"], body["bytes"]) == ("preference", 25, len(content))
    assert body["sha256"] == hashlib.sha256(content).hexdigest()
    [stored] = stored_files(settings)
    assert stored.name.endswith(".jsonl.gz")
    rows = client.get(f"/v1/datasets/{body['id']}/rows?offset=24&limit=5", headers=auth).json()
    assert len(rows["data"]) == 1 and rows["has_more"] is False
    assert "preferred_output" in rows["data"][0]


def test_declared_format_is_used_instead_of_detection(client: TestClient, auth: dict[str, str]) -> None:
    content = real_lines("gsm8k-train.jsonl", 5)
    resp = upload(client, auth, content, "g.jsonl", format="prompt", name="gsm8k")
    assert resp.status_code == 201, resp.text
    assert resp.json()["format"] == "prompt" and resp.json()["name"] == "gsm8k"
    assert_error(upload(client, auth, content, "g.jsonl", format="standard"), 422, "invalid_dataset", "file")
    assert_error(upload(client, auth, content, "g.jsonl", format="csv"), 422, param="format")


# ---- bad input: 422/413 with the error JSON, and nothing stored -----------------------------------


def test_malformed_json_line_is_422_naming_the_line_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session
) -> None:
    lines = real_lines("orca-dpo-pairs.openai-dpo.jsonl", 6).splitlines(keepends=True)
    lines[3] = lines[3][:40] + b"\n"  # line 4 cut in the middle of its JSON
    error = assert_error(upload(client, auth, b"".join(lines)), 422, "invalid_dataset", "file")
    assert error["details"] == [{"line": 4, "field": None, "message": error["details"][0]["message"]}]
    assert "not valid JSON" in error["details"][0]["message"]
    assert "line 4" in error["message"]
    assert_no_dataset_stored(session, settings)


def test_row_missing_chosen_is_422_naming_line_and_field_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session
) -> None:
    rows = [json.loads(line) for line in real_lines("hh-rlhf-harmless-base.jsonl", 5).splitlines()]
    standard = [{"prompt": "Q", "chosen": r["chosen"][-50:], "rejected": r["rejected"][-50:]} for r in rows]
    del standard[2]["chosen"]
    content = b"".join(json.dumps(r).encode() + b"\n" for r in standard)
    error = assert_error(upload(client, auth, content), 422, "invalid_dataset")
    assert error["details"] == [{"line": 3, "field": "chosen", "message": '"chosen" is missing'}]
    assert_no_dataset_stored(session, settings)


def test_only_the_first_100_problems_are_listed(client: TestClient, auth: dict[str, str]) -> None:
    error = assert_error(upload(client, auth, b"{not json}\n" * 150), 422, "invalid_dataset")
    assert len(error["details"]) == 100
    assert [d["line"] for d in error["details"]] == list(range(1, 101))


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"], ids=["zero-bytes", "blank-lines"])
def test_empty_file_is_422_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, content: bytes
) -> None:
    error = assert_error(upload(client, auth, content), 422, "invalid_dataset", "file")
    assert "empty" in error["message"]
    assert_no_dataset_stored(session, settings)


def test_file_over_the_size_limit_is_413_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches

    monkeypatch.setenv("ALIGND_MAX_UPLOAD_BYTES", "4096")
    reset_caches()
    content = real_lines("hh-rlhf-harmless-base.jsonl", 40)
    assert len(content) > 4096
    error = assert_error(upload(client, auth, content), 413, "payload_too_large", "file")
    assert "4096" in error["message"]
    assert_no_dataset_stored(session, settings)
    # Small enough: accepted under the same limit.
    assert upload(client, auth, real_lines("gsm8k-train.jsonl", 2)).status_code == 201


def test_upload_over_the_limit_without_content_length_is_cut_off_while_streaming(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches

    monkeypatch.setenv("ALIGND_MAX_UPLOAD_BYTES", "4096")
    reset_caches()
    content = real_lines("hh-rlhf-harmless-base.jsonl", 40)
    boundary = "alignd-test-boundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.jsonl"\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks():  # a generator body is sent chunked, without Content-Length
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    resp = client.post(
        "/v1/datasets", headers={**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}, content=chunks()
    )
    assert_error(resp, 413, "payload_too_large")
    assert_no_dataset_stored(session, settings)


def test_gz_file_that_is_not_gzip_is_422_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session
) -> None:
    error = assert_error(
        upload(client, auth, real_lines("gsm8k-train.jsonl", 3), "gsm8k.jsonl.gz"), 422, "invalid_gzip", "file"
    )
    assert "not gzip" in error["message"]
    assert_no_dataset_stored(session, settings)


def test_truncated_gzip_is_422_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session
) -> None:
    content = gzip.compress(real_lines("gsm8k-train.jsonl", 50))
    assert_error(upload(client, auth, content[: len(content) // 2], "g.jsonl.gz"), 422, "invalid_gzip")
    assert_no_dataset_stored(session, settings)


def test_non_utf8_file_is_422_naming_the_line_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session
) -> None:
    good = real_lines("gsm8k-train.jsonl", 2)
    latin1 = json.dumps({"question": "Combien coûte un café ?", "answer": "#### 2"}, ensure_ascii=False)
    content = good + latin1.encode("latin-1") + b"\n"
    error = assert_error(upload(client, auth, content), 422, "invalid_dataset")
    assert error["details"][0]["line"] == 3
    assert "UTF-8" in error["details"][0]["message"]
    assert_no_dataset_stored(session, settings)


def test_rows_of_different_formats_are_rejected(client: TestClient, auth: dict[str, str]) -> None:
    content = real_lines("gsm8k-train.jsonl", 2) + real_lines("orca-dpo-pairs.openai-dpo.jsonl", 1)
    error = assert_error(upload(client, auth, content), 422, "invalid_dataset")
    assert error["details"][0]["line"] == 3
    assert "same format" in error["details"][0]["message"]


def test_request_without_a_file_part_is_rejected(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.post("/v1/datasets", headers=auth, files={"other": ("x", b"{}")}), 422, param="file")
    assert_error(client.post("/v1/datasets", headers=auth, json={"file": "x"}), 415)


# ---- validate, list, get, rows, delete -----------------------------------------------------------


def test_validate_checks_the_same_rules_and_stores_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session
) -> None:
    content = real_lines("alpaca-en-demo.jsonl", 10)
    resp = upload(client, auth, content, "a.jsonl", path="/v1/datasets/validate")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {
        "valid": True,
        "kind": "sft",
        "format": "alpaca",
        "rows": 10,
        "bytes": len(content),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    assert_error(upload(client, auth, b"[1, 2]\n", path="/v1/datasets/validate"), 422, "invalid_dataset")
    assert_no_dataset_stored(session, settings)


def test_list_pages_newest_first_with_an_opaque_cursor(client: TestClient, auth: dict[str, str]) -> None:
    ids = [upload_ok(client, auth, real_lines("gsm8k-train.jsonl", i + 1))["id"] for i in range(5)]
    seen, after = [], None
    while True:
        params = {"limit": 2} | ({"after": after} if after else {})
        page = client.get("/v1/datasets", headers=auth, params=params).json()
        seen += [d["id"] for d in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
    assert seen == ids[::-1]
    # The last item's plain id works as a cursor too.
    page = client.get("/v1/datasets", headers=auth, params={"after": ids[2]}).json()
    assert [d["id"] for d in page["data"]] == ids[1::-1]
    assert_error(client.get("/v1/datasets", headers=auth, params={"after": "bm9wZQ"}), 422, param="after")
    assert_error(client.get("/v1/datasets", headers=auth, params={"limit": 0}), 422, param="limit")


@pytest.mark.parametrize("store", ["file", "s3"])
def test_get_and_rows_preview(client: TestClient, auth: dict[str, str], store: str) -> None:
    content = real_lines("gsm8k-train.jsonl", 12)
    ds = upload_ok(client, auth, content)
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).json() == ds
    page = client.get(f"/v1/datasets/{ds['id']}/rows", headers=auth, params={"offset": 10, "limit": 5}).json()
    expected = [json.loads(line) for line in content.splitlines()[10:]]
    assert page == {"data": expected, "offset": 10, "has_more": False}
    page = client.get(f"/v1/datasets/{ds['id']}/rows", headers=auth, params={"limit": 3}).json()
    assert len(page["data"]) == 3 and page["has_more"] is True


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_delete_is_409_while_a_live_job_uses_the_dataset_then_removes_it(
    client: TestClient,
    auth: dict[str, str],
    tenant: TenantKey,
    settings: Settings,
    session: Session,
    backend: str,
) -> None:
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 4))
    job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=ds["id"], hyperparameters={})
    session.add(job)
    session.commit()
    assert_error(client.delete(f"/v1/datasets/{ds['id']}", headers=auth), 409, "dataset_in_use")
    assert len(stored_files(settings)) == 1
    job.status = "succeeded"
    session.commit()
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 204
    assert stored_files(settings) == []
    assert_error(client.get(f"/v1/datasets/{ds['id']}", headers=auth), 404, "not_found")
    assert client.get("/v1/datasets", headers=auth).json()["data"] == []
    # The finished job still refers to the row.
    session.expire_all()
    assert session.scalar(select(Dataset.deleted_at).where(Dataset.id == ds["id"])) is not None
