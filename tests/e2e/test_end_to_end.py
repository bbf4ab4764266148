"""The four user actions end to end, on a tiny model: upload -> submit DPO -> watch events ->
succeeded -> download the checkpoint -> its sha256 matches -> from_pretrained loads it and its weights
moved away from the base model.

Once on Postgres + Redis with `alignd worker` as a separate process (the API in-process through
TestClient), once on the embedded default: `alignd serve --data-dir D` alone, SQLite for database
and broker, driven over HTTP with httpx.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import alignd, clean_environment
from tests.services import free_port
from tests.worker.conftest import short_preference_pairs

HYPERPARAMETERS = {
    "max_steps": 8,
    "save_every": 4,
    "batch_size": 2,
    "max_length": 256,
    "max_prompt_length": 192,
    "learning_rate": 1e-3,
}


def align_end_to_end(
    http: httpx.Client, headers: dict[str, str], base_model_dir: Path, tmp_path: Path, *, sse: bool = False
) -> None:
    """Drive the whole user journey through the REST API and check every step.

    Events are followed live: with `sse`, on the Server-Sent Events stream; else by paging.
    """
    upload = http.post(
        "/v1/datasets",
        headers=headers,
        files={"file": ("pairs.jsonl", short_preference_pairs(), "application/jsonl")},
        data={"name": "hh-rlhf short pairs"},
    )
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    assert dataset["kind"] == "preference" and dataset["rows"] == 32

    created = http.post(
        "/v1/jobs",
        headers=headers,
        json={
            "algorithm": "dpo",
            "base_model": "tiny",
            "dataset_id": dataset["id"],
            "hyperparameters": HYPERPARAMETERS,
        },
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    follow = _stream_events if sse else _follow_events
    events = follow(http, headers, job_id, timeout=240)
    job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["status"] for e in events if e["type"] == "status"] == ["queued", "running", "succeeded"]
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, 9))
    assert job["progress"]["step"] == 8 and "loss" in job["metrics"]

    checkpoints = http.get(f"/v1/jobs/{job_id}/checkpoints", headers=headers).json()["data"]
    final = next(c for c in checkpoints if c["id"] == job["output_checkpoint_id"])
    assert final["kind"] == "final" and final["step"] == 8

    download = http.get(f"/v1/checkpoints/{final['id']}/download", headers=headers)
    assert download.status_code == 200
    body = download.content
    assert int(download.headers["content-length"]) == len(body) == final["bytes"]
    assert hashlib.sha256(body).hexdigest() == final["sha256"] == download.headers["x-checkpoint-sha256"]

    folder = tmp_path / "downloaded"
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        tar.extractall(folder, filter="data")
    _assert_loads_and_differs(folder, base_model_dir)


def _follow_events(http: httpx.Client, headers: dict[str, str], job_id: str, timeout: float) -> list[dict[str, Any]]:
    """Page through the job's events as they arrive, until the job is final."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        after = {"after": events[-1]["seq"]} if events else {}
        page = http.get(f"/v1/jobs/{job_id}/events", headers=headers, params={"limit": 100, **after}).json()
        events += page["data"]
        if page["has_more"]:
            continue
        statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
        if statuses and statuses[-1] in ("succeeded", "failed", "cancelled"):
            return events
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s; events so far: {events[-5:]}")


def _stream_events(http: httpx.Client, headers: dict[str, str], job_id: str, timeout: float) -> list[dict[str, Any]]:
    """Read the job's Server-Sent Events stream until it ends (it does once the job is final)."""
    events: list[dict[str, Any]] = []
    with http.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers, timeout=timeout) as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line.removeprefix("data:").strip()))
    return events


def _assert_loads_and_differs(folder: Path, base_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tuned = AutoModelForCausalLM.from_pretrained(folder)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    AutoTokenizer.from_pretrained(folder)
    tuned_state, base_state = tuned.state_dict(), base.state_dict()
    assert tuned_state.keys() == base_state.keys()
    changed = [name for name in base_state if not torch.equal(tuned_state[name], base_state[name])]
    assert changed, "training did not change any weight"


@pytest.mark.slow
def test_upload_train_watch_and_download_on_postgres_and_redis_with_a_separate_worker(
    client, auth: dict[str, str], settings, tiny_model_dir: Path, run_alignd, tmp_path: Path
) -> None:
    alignd("models", "add", "tiny", str(tiny_model_dir))
    worker = run_alignd("worker")
    worker.wait_for_log(" ready.", timeout=120)

    align_end_to_end(client, auth, tiny_model_dir, tmp_path)


@pytest.mark.slow
def test_upload_train_watch_and_download_on_the_embedded_sqlite_default(
    tiny_model_dir: Path, run_alignd, tmp_path: Path
) -> None:
    env = clean_environment()
    data_dir = tmp_path / "alignd-data"
    alignd("models", "add", "tiny", str(tiny_model_dir), "--data-dir", str(data_dir), env=env)
    key = alignd("keys", "create", "--tenant", "acme", "--data-dir", str(data_dir), env=env).strip().splitlines()[-1]
    port = free_port()
    serve = run_alignd("serve", "--data-dir", str(data_dir), "--port", str(port), env=env)
    serve.wait_for_log("Uvicorn running", timeout=120)
    assert (data_dir / "alignd.db").exists()

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
        assert http.get("/healthz").status_code == 200
        align_end_to_end(http, {"Authorization": f"Bearer {key}"}, tiny_model_dir, tmp_path, sse=True)

    # After uvicorn's graceful shutdown `alignd serve` stops its embedded worker and exits 128 + SIGTERM.
    assert serve.stop() == 128 + signal.SIGTERM
    assert not _embedded_workers_of(data_dir), "the embedded worker outlived `alignd serve`"


def _embedded_workers_of(data_dir: Path) -> list[int]:
    """Processes still running with this data dir in their environment."""
    needle = f"ALIGND_DATA_DIR={data_dir.resolve()}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if needle in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_stopping_alignd_serve_mid_job_saves_at_the_step_boundary_and_the_next_start_resumes_from_it(
    tiny_model_dir: Path, run_alignd, tmp_path: Path
) -> None:
    env = clean_environment()
    data_dir = tmp_path / "alignd-data"
    alignd("models", "add", "tiny", str(tiny_model_dir), "--data-dir", str(data_dir), env=env)
    key = alignd("keys", "create", "--tenant", "acme", "--data-dir", str(data_dir), env=env).strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    total = 100  # long enough that the shutdown lands well before the end (a tiny step takes ~0.3 s)

    def serve() -> tuple[Any, httpx.Client]:
        port = free_port()
        service = run_alignd("serve", "--data-dir", str(data_dir), "--port", str(port), env=env)
        service.wait_for_log("Uvicorn running", timeout=120)
        return service, httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60)

    first, http = serve()
    with http:
        files = {"file": ("pairs.jsonl", short_preference_pairs(), "application/jsonl")}
        dataset = http.post("/v1/datasets", files=files).json()
        body = {"algorithm": "dpo", "base_model": "tiny", "dataset_id": dataset["id"],
                "hyperparameters": {**HYPERPARAMETERS, "max_steps": total, "save_every": 1000}}  # fmt: skip
        job_id = http.post("/v1/jobs", json=body).json()["id"]
        deadline = time.monotonic() + 240
        while http.get(f"/v1/jobs/{job_id}").json()["progress"]["step"] < 3:
            assert time.monotonic() < deadline, "the job did not reach step 3"
            time.sleep(0.3)
    assert first.stop() == 128 + signal.SIGTERM  # uvicorn stops, then the embedded worker (warm: it saves)

    second, http = serve()
    with http:
        events = _follow_events(http, headers, job_id, timeout=240)
        checkpoints = http.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    second.stop()
    saved = [c for c in checkpoints if c["kind"] == "intermediate"]
    assert len(saved) == 1 and 3 <= saved[0]["step"] < total  # no periodic one: the shutdown's save
    statuses = [e["data"] for e in events if e["type"] == "status"]
    assert [s["status"] for s in statuses] == ["queued", "running", "queued", "running", "succeeded"]
    assert statuses[2]["reason"] == "the worker is shutting down" and statuses[2]["saved"] is True
    logs = [e["data"]["message"] for e in events if e["type"] == "log"]
    assert f"attempt 2: resuming from the checkpoint of step {saved[0]['step']}" in logs
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["step"] for e in events if e["type"] == "metrics"] == list(range(1, total + 1))
