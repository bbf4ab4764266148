"""S3 as the artifact store, end to end: upload -> job -> checkpoints -> a killed worker -> resumed on
another "machine" -> download with Range.

The API runs in-process (TestClient), workers are real `alignd worker` processes with the fake trainer
(tests/worker/fake_trainer.py, which also checks that the worker downloaded the training file), the
store is a bucket on moto's S3 server on loopback. The second worker gets a fresh work directory:
all it shares with the first is the database, the broker and the bucket.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from tests.conftest import TenantKey
from tests.hub_cache import cached_hub_model
from tests.services import s3_client
from tests.worker.conftest import (
    checkpoints_of,
    events_of,
    job_row,
    short_preference_pairs,
    trainer_pids,
    wait_for,
    wait_for_status,
)

pytestmark = pytest.mark.parametrize("store", ["s3"])

TOTAL, SAVE_EVERY = 40, 5


def test_a_job_on_s3_survives_a_killed_worker_and_its_checkpoint_downloads_from_the_bucket(
    worker_settings: Settings,
    db: sessionmaker[Session],
    start_worker,
    client: TestClient,
    auth: dict[str, str],
    tenant: TenantKey,
    s3_endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
) -> None:
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.25")
    bucket, prefix = worker_settings.resolved_storage_url.removeprefix("s3://").split("/", 1)

    def objects() -> list[str]:
        listed = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
        return [o["Key"].removeprefix(f"{prefix}/") for o in listed.get("Contents", [])]

    upload = client.post("/v1/datasets", headers=auth, files={"file": ("pairs.jsonl", short_preference_pairs())})
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    stored = f"datasets/{tenant.id}/{dataset_id}.jsonl"
    assert sorted(o for o in objects() if o.startswith("datasets/")) == [stored, f"{stored}.idx"]  # rows + index
    assert worker_settings.hub_cache_dir is not None
    cached_hub_model(worker_settings.hub_cache_dir, "org/any-model")  # hub ids resolve from the cache only
    first = start_worker(fake_trainer=True)
    created = client.post(
        "/v1/jobs",
        headers=auth,
        json={
            "algorithm": "dpo",
            "base_model": "org/any-model",
            "dataset_id": dataset_id,
            "hyperparameters": {"max_steps": TOTAL, "save_every": SAVE_EVERY},
        },
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    wait_for(lambda: checkpoints_of(db, job_id), 60, "a first checkpoint")
    assert trainer_pids(job_id)
    first.kill()  # SIGKILL: the worker and its trainer die; the job stays running until its lease runs out
    wait_for(lambda: not trainer_pids(job_id), 10, "the trainer to die with its worker")
    first_checkpoints = checkpoints_of(db, job_id)

    monkeypatch.setenv("ALIGND_WORK_DIR", str(tmp_path / "another-machine"))
    start_worker(fake_trainer=True)
    job = wait_for_status(db, job_id, ("succeeded", "failed", "cancelled"), timeout=120)

    assert job.status == "succeeded", job.error_message
    assert job.attempt == 2
    # The second attempt resumed from a checkpoint it fetched from the bucket, on a machine of its own.
    resumed = [e.data["message"] for e in events_of(db, job_id) if e.type == "log" and "resuming" in e.data["message"]]
    assert resumed and resumed[0].startswith("attempt 2: resuming from the checkpoint of step ")
    resumed_step = int(resumed[0].rsplit(" ", 1)[-1])
    assert resumed_step >= first_checkpoints[-1].step
    events_file = tmp_path / "another-machine" / "jobs" / job_id / "attempt-2" / "events.jsonl"
    lines = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert next(e["step"] for e in lines if e["type"] == "metrics") == resumed_step + 1
    assert not (tmp_path / "another-machine" / "jobs" / job_id / "attempt-2" / "data").exists()  # cleaned up

    # Every checkpoint is an object in the bucket; nothing was written to a local artifact directory.
    checkpoints = checkpoints_of(db, job_id)
    assert sorted(o for o in objects() if o.startswith("checkpoints/")) == sorted(c.storage_key for c in checkpoints)
    assert not (worker_settings.data_dir / "artifacts").exists()
    final = client.get(f"/v1/checkpoints/{job.output_checkpoint_id}", headers=auth).json()
    assert final["step"] == TOTAL and final["kind"] == "final"

    # The download streams from the bucket, in two Range requests as an interrupted client resumes it.
    url = f"/v1/checkpoints/{final['id']}/download"
    half = final["bytes"] // 2
    head = client.get(url, headers={**auth, "Range": f"bytes=0-{half - 1}"})
    tail = client.get(url, headers={**auth, "Range": f"bytes={half}-"})
    assert (head.status_code, tail.status_code) == (206, 206)
    archive = head.content + tail.content
    assert len(archive) == final["bytes"]
    assert hashlib.sha256(archive).hexdigest() == final["sha256"] == tail.headers["x-checkpoint-sha256"]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        config = tar.extractfile("config.json")
        assert config is not None and json.loads(config.read()) == {"step": TOTAL}
    assert job_row(db, job_id).output_checkpoint_id == final["id"]
