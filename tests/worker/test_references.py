"""Every reference in a job becomes an absolute local path in the trainer's spec (a hub id: its hub-cache snapshot)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.models import Job
from tests.hub_cache import cached_hub_model
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
    assert worker_settings.hub_cache_dir is not None
    snapshot = cached_hub_model(worker_settings.hub_cache_dir, "Qwen/Qwen2.5-0.5B-Instruct")
    with db() as session:
        named = add_job(session, tenant.id, dataset_id, "smol", seed=7).id
        hub = add_job(session, tenant.id, dataset_id, "Qwen/Qwen2.5-0.5B-Instruct").id

    spec = _spec(db, named, worker_settings, storage)
    assert spec.base_model == str(worker_settings.resolved_models_dir / "smol")
    assert Path(spec.train_file).read_bytes().count(b"\n") == 32
    assert Path(spec.train_file).parent == _workdir(worker_settings, named) / "data"  # a copy, not the store's
    assert spec.job_id == named and spec.seed == 7 and spec.algorithm == "dpo"
    assert len(spec.dataset_sha256["train"]) == 64
    assert _spec(db, hub, worker_settings, storage).base_model == str(snapshot.resolve())


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
    with pytest.raises(UnresolvedReference, match="server paths are not accepted"):
        _spec(db, job_id, worker_settings, storage)


def test_a_hub_id_never_reads_a_folder_of_that_name_in_the_working_directory(
    db: sessionmaker[Session],
    storage: Storage,
    tenant,
    dataset_id: str,
    worker_settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "org" / "name").mkdir(parents=True)
    (cwd / "org" / "name" / "config.json").write_text('{"model_type": "llama"}')
    monkeypatch.chdir(cwd)
    with db() as session:
        existing = add_job(session, tenant.id, dataset_id, "org/name").id
        missing = add_job(session, tenant.id, dataset_id, "org/gone").id

    with pytest.raises(UnresolvedReference) as found:
        _spec(db, existing, worker_settings, storage)
    with pytest.raises(UnresolvedReference) as not_found:
        _spec(db, missing, worker_settings, storage)
    assert "hub cache" in str(found.value)
    # Whether the folder exists changes nothing a tenant could see.
    assert str(found.value).replace("org/name", "X") == str(not_found.value).replace("org/gone", "X")

    # Once the hub cache has the model, the trainer gets the cache's snapshot, never the local folder.
    assert worker_settings.hub_cache_dir is not None
    snapshot = cached_hub_model(worker_settings.hub_cache_dir, "org/name")
    base_model = _spec(db, existing, worker_settings, storage).base_model
    assert Path(base_model).is_absolute() and base_model == str(snapshot.resolve())
