"""Every reference in a job becomes a local path in the trainer's spec (or a hub id, passed through)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.models import Job
from tests.worker.conftest import add_dataset, add_job, job_row
from worker.references import UnresolvedReference, build_spec
from worker.runner import run_job


def _workdir(settings: Settings, job_id: str) -> Path:
    return settings.resolved_work_dir / "jobs" / job_id / "attempt-1"


def _spec(db: sessionmaker[Session], job_id: str, settings: Settings, storage: Storage):  # type: ignore[no-untyped-def]
    with db() as session:
        return build_spec(session, session.get_one(Job, job_id), settings, storage, _workdir(settings, job_id))


@pytest.fixture
def dataset_id(db: sessionmaker[Session], storage: Storage, tenant) -> str:  # type: ignore[no-untyped-def]
    with db() as session:
        return add_dataset(session, storage, tenant.id).id


def test_a_model_name_a_hub_id_and_the_dataset_become_what_the_trainer_reads(
    db: sessionmaker[Session], storage: Storage, tenant, dataset_id: str, worker_settings: Settings
) -> None:
    (worker_settings.resolved_models_dir / "smol").mkdir(parents=True)
    with db() as session:
        named = add_job(session, tenant.id, dataset_id, "smol", seed=7).id
        hub = add_job(session, tenant.id, dataset_id, "Qwen/Qwen2.5-0.5B-Instruct").id

    spec = _spec(db, named, worker_settings, storage)
    assert spec.base_model == str(worker_settings.resolved_models_dir / "smol")
    assert Path(spec.train_file).read_bytes().count(b"\n") == 32
    assert Path(spec.train_file).parent == _workdir(worker_settings, named) / "data"  # a copy, not the store's
    assert spec.job_id == named and spec.seed == 7 and spec.algorithm == "dpo"
    assert len(spec.dataset_sha256["train"]) == 64
    assert _spec(db, hub, worker_settings, storage).base_model == "Qwen/Qwen2.5-0.5B-Instruct"


def test_a_finished_jobs_output_is_extracted_once_and_used_as_the_next_base_model(
    fake_trainer: None,
    db: sessionmaker[Session],
    storage: Storage,
    tenant,
    other_tenant,
    dataset_id: str,
    worker_settings: Settings,
) -> None:
    (worker_settings.resolved_models_dir / "smol").mkdir(parents=True)
    with db() as session:
        first = add_job(session, tenant.id, dataset_id, "smol").id
    run_job(first, worker_settings)
    output = job_row(db, first).output_checkpoint_id
    assert output is not None

    with db() as session:
        by_job = add_job(session, tenant.id, dataset_id, f"job:{first}").id
        by_checkpoint = add_job(session, tenant.id, dataset_id, f"checkpoint:{output}").id
        other_dataset = add_dataset(session, storage, other_tenant.id).id
        stolen = add_job(session, other_tenant.id, other_dataset, f"checkpoint:{output}").id

    folder = Path(_spec(db, by_job, worker_settings, storage).base_model)
    assert folder == worker_settings.resolved_work_dir / "cache" / "checkpoints" / output
    assert json.loads((folder / "config.json").read_text()) == {"step": 6}  # what the fake trainer saved
    assert _spec(db, by_checkpoint, worker_settings, storage).base_model == str(folder)
    with pytest.raises(UnresolvedReference, match="no such checkpoint"):
        _spec(db, stolen, worker_settings, storage)  # another tenant's checkpoint does not resolve


def test_a_path_is_never_taken_as_a_model(
    db: sessionmaker[Session], storage: Storage, tenant, dataset_id: str, worker_settings: Settings
) -> None:
    with db() as session:
        job_id = add_job(session, tenant.id, dataset_id, "/etc").id
    with pytest.raises(UnresolvedReference, match="not in the server's model directory"):
        _spec(db, job_id, worker_settings, storage)
