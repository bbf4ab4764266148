"""/metrics follows a job through its life: submitted (queue), running (attempts, step rate, step age,
relay lag), finished; parsed with prometheus_client's own parser. The stand-in trainer runs through
the real runner, so the numbers come from the real relay."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from tests.api.helpers import real_lines, upload_ok
from tests.conftest import TenantKey
from tests.worker.conftest import add_dataset, add_job, job_row, wait_for
from worker.relay import EventRelay
from worker.runner import claim, run_job


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from GET /metrics."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.text)
        for s in family.samples
    }


def job_sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, job_id: str) -> float | None:
    return samples.get((name, (("algorithm", "dpo"), ("job_id", job_id))))


def test_metrics_follow_a_job_from_queue_to_running_to_done(
    fake_trainer: None,
    worker_settings: Settings,
    client: TestClient,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.3")
    (worker_settings.resolved_models_dir / "fake-model").mkdir(parents=True)
    (worker_settings.resolved_models_dir / "fake-model" / "config.json").write_text("{}")
    dataset = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 8))
    before = scrape(client)
    assert before[("alignd_queue_depth", ())] == 0 and before[("alignd_running_attempts", ())] == 0
    latency = ("alignd_http_request_duration_seconds_count", (("method", "POST"), ("route", "/v1/jobs")))
    posts_before = before.get(latency, 0)

    body = {"algorithm": "dpo", "base_model": "fake-model", "dataset_id": dataset["id"]}
    body["hyperparameters"] = {"max_steps": 14}
    job_id = client.post("/v1/jobs", headers=auth, json=body).json()["id"]

    queued = scrape(client)
    assert queued[("alignd_queue_depth", ())] == 1
    assert queued[("alignd_jobs", (("status", "queued"),))] == 1
    assert queued[("alignd_oldest_queued_job_age_seconds", ())] >= 0
    assert queued[latency] == posts_before + 1  # the POST's latency was observed under its route

    worker = threading.Thread(target=run_job, args=(job_id, worker_settings))
    worker.start()
    try:
        running = wait_for(
            lambda: (s := scrape(client)) and job_sample(s, "alignd_job_steps_per_second", job_id) is not None and s,
            30,
            "a step rate for the running job",
        )
        assert running[("alignd_queue_depth", ())] == 0
        assert running[("alignd_running_attempts", ())] == 1
        assert running[("alignd_jobs", (("status", "running"),))] == 1
        # 0.3 s a step: about 3 steps a second, whatever the polling adds
        assert 0.5 < job_sample(running, "alignd_job_steps_per_second", job_id) < 10  # type: ignore[operator]
        assert 0 <= job_sample(running, "alignd_job_seconds_since_last_step", job_id) < 5  # type: ignore[operator]
        assert 0 <= job_sample(running, "alignd_event_relay_lag_seconds", job_id) < 5  # type: ignore[operator]
        assert job_sample(running, "alignd_job_step", job_id) >= 1  # type: ignore[operator]
    finally:
        worker.join(60)

    done = scrape(client)
    assert done[("alignd_running_attempts", ())] == 0
    assert done[("alignd_jobs", (("status", "succeeded"),))] == 1
    assert job_sample(done, "alignd_job_seconds_since_last_step", job_id) is None  # only held jobs have one
    assert done[("alignd_checkpoints", ())] == 1
    assert done[("alignd_http_request_duration_seconds_count", (("method", "GET"), ("route", "/metrics")))] >= 3


def test_relay_lag_is_measured_from_an_events_own_time_when_the_trainer_stamps_one(
    db: sessionmaker[Session], storage: Storage, worker_settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job_id = add_job(session, tenant.id, dataset.id, "tiny").id
    attempt = claim(db, job_id, "w1", worker_settings)
    assert attempt is not None
    events = tmp_path / "events.jsonl"
    written = time.time() - 30  # the trainer wrote it 30 s before the relay got to it
    events.write_text(json.dumps({"type": "metrics", "step": 1, "values": {"loss": 0.5}, "time": written}) + "\n")

    EventRelay(attempt, db, storage, events, batch_size=10).pump()

    job = job_row(db, job_id)
    assert job.relay_lag_seconds is not None and 30 <= job.relay_lag_seconds < 40
    assert job.last_step_at is not None and job.progress == {"step": 1}
