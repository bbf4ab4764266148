"""An evaluate job in the worker: every model becomes a local folder labelled with its MODEL_REF, and
the relay turns per-model metrics into the job's results (once, even when an attempt is replayed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.events import append_events, lock_job
from api.jobs.lifecycle import expire_lease
from api.jobs.models import Job
from tests.conftest import TenantKey
from tests.worker.conftest import add_dataset, events_of, job_row
from worker.references import build_spec
from worker.relay import EventRelay
from worker.runner import claim


def add_evaluate_job(session: Session, tenant_id: str, dataset_id: str, base_model: str, models: list[str]) -> Job:
    job = Job(
        tenant_id=tenant_id,
        algorithm="evaluate",
        base_model=base_model,
        models=models,
        dataset_id=dataset_id,
        hyperparameters={"max_samples": 4, "max_length": 256, "max_prompt_length": 192},
    )
    session.add(job)
    session.flush()
    append_events(session, job, [("status", {"status": "queued"})])
    session.commit()
    return job


def test_the_spec_of_an_evaluate_job_lists_every_model_by_its_ref_with_the_base_model_first(
    db: sessionmaker[Session], storage: Storage, worker_settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    for name in ("smol", "smol-tuned"):
        (worker_settings.resolved_models_dir / name).mkdir(parents=True)
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job = add_evaluate_job(session, tenant.id, dataset.id, "smol", ["smol-tuned"])
        spec = build_spec(session, job, worker_settings, storage, tmp_path)
    models_dir = worker_settings.resolved_models_dir
    assert spec.algorithm == "evaluate" and spec.base_model == str(models_dir / "smol")
    assert [(m.name, m.path) for m in spec.models or []] == [
        ("smol", str(models_dir / "smol")),
        ("smol-tuned", str(models_dir / "smol-tuned")),
    ]
    assert spec.config().model_dump()["max_samples"] == 4


def _metrics(step: int, model: str, accuracy: float) -> dict[str, Any]:
    return {"type": "metrics", "step": step, "model": model, "values": {"eval/accuracy": accuracy}}


def test_per_model_metrics_become_the_jobs_results_once_even_when_a_resumed_attempt_replays_them(
    db: sessionmaker[Session], storage: Storage, worker_settings: Settings, tenant: TenantKey, tmp_path: Path
) -> None:
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job_id = add_evaluate_job(session, tenant.id, dataset.id, "base", ["job:a"]).id

    first = claim(db, job_id, "w1", worker_settings)
    assert first is not None
    events = tmp_path / "attempt-1.jsonl"
    events.write_text(json.dumps(_metrics(1, "base", 0.5)) + "\n")
    EventRelay(first, db, storage, events, batch_size=10).pump()
    assert job_row(db, job_id).results == {"base": {"eval/accuracy": 0.5}}
    with db() as session, session.begin():
        assert expire_lease(session, lock_job(session, job_id)) == "queued"

    second = claim(db, job_id, "w2", worker_settings)
    assert second is not None
    events = tmp_path / "attempt-2.jsonl"
    lines = [_metrics(1, "base", 0.5), _metrics(2, "job:a", 0.75), {"type": "done"}]
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    EventRelay(second, db, storage, events, batch_size=10, recorded_steps={"eval/accuracy": 1}).pump()

    job = job_row(db, job_id)
    assert job.status == "succeeded" and job.output_checkpoint_id is None
    assert job.results == {"base": {"eval/accuracy": 0.5}, "job:a": {"eval/accuracy": 0.75}}
    metrics = [e.data for e in events_of(db, job_id) if e.type == "metrics"]
    assert metrics == [
        {"step": 1, "model": "base", "values": {"eval/accuracy": 0.5}},
        {"step": 2, "model": "job:a", "values": {"eval/accuracy": 0.75}},
    ]
