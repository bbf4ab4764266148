"""A job's `integrations`: the worker reports what the trainer emits to W&B (offline mode) and MLflow
(a file store), through the real runner and relay with the stand-in trainer; a tracker that cannot be
used fails the job before any training."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.core import reset_caches
from api.core.settings import Settings, get_settings
from api.core.storage import Storage
from tests.conftest import TenantKey
from tests.worker.conftest import add_dataset, add_job, checkpoints_of, events_of, job_row, wait_for
from worker import integrations
from worker.runner import run_job


@pytest.fixture
def trackers(worker_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Operator settings: W&B offline into tmp, MLflow's file store in tmp."""
    monkeypatch.setenv("ALIGND_WANDB_MODE", "offline")
    monkeypatch.setenv("ALIGND_WANDB_DIR", str(tmp_path / "wandb-root"))
    monkeypatch.setenv("ALIGND_MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 wants a database; a file store is enough here
    monkeypatch.setenv("WANDB_SILENT", "true")
    reset_caches()
    return get_settings()


def queue_job(db: sessionmaker[Session], storage: Storage, tenant: TenantKey, models_dir: Path, **fields: Any) -> str:
    (models_dir / "fake-model").mkdir(parents=True, exist_ok=True)
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        return add_job(session, tenant.id, dataset.id, "fake-model", **fields).id


def wandb_records(run_file: Path) -> Iterator[Any]:
    """The records of a W&B run file (`run-<id>.wandb`): W&B's header, then LevelDB log blocks of
    protobuf Records (wandb 0.31 ships no Python reader for its own transaction log)."""
    from wandb.proto import wandb_internal_pb2

    raw, block, header = run_file.read_bytes(), 32768, 7
    assert raw[:4] == b":W&B"
    pos, pending = header, b""
    while pos + header <= len(raw):
        if block - pos % block < header:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + header])
        if pos + header + length > len(raw):  # still being written
            return
        data, pos = raw[pos + header : pos + header + length], pos + header + length
        if kind == 0:  # zero padding up to the end of the block
            pos += (block - pos % block) % block
            continue
        pending = data if kind in (1, 2) else pending + data  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def item_key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


def test_wandb_offline_run_holds_every_metric_by_step_and_the_final_checkpoint(
    fake_trainer: None, trackers: Settings, db: sessionmaker[Session], storage: Storage, tenant: TenantKey
) -> None:
    wandb = {"type": "wandb", "wandb": {"project": "alignd-tests", "name": "tiny dpo", "tags": ["ci"]}}
    job_id = queue_job(db, storage, tenant, trackers.resolved_models_dir, integrations=[wandb])

    run_job(job_id, trackers)

    assert job_row(db, job_id).status == "succeeded"
    assert trackers.wandb_dir is not None
    (run_file,) = (trackers.wandb_dir / "wandb").glob(f"offline-run-*-{job_id}/run-{job_id}.wandb")
    # wandb's service process writes the file; give it a moment to flush up to the run's exit record.
    records = wait_for(
        lambda: (rs := list(wandb_records(run_file))) and any(r.WhichOneof("record_type") == "exit" for r in rs) and rs,
        20,
        "the W&B run file to hold the run's exit",
    )
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert (run.run_id, run.project, run.display_name, list(run.tags)) == (job_id, "alignd-tests", "tiny dpo", ["ci"])
    history = {
        r.history.step.num: {
            key: float(i.value_json) for i in r.history.item if not (key := item_key(i)).startswith("_")
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    }
    relayed = {e.data["step"]: e.data["values"] for e in events_of(db, job_id) if e.type == "metrics"}
    assert history == relayed and sorted(history) == list(range(1, 7))  # the default 6 steps of add_job
    assert history[6] == {"loss": pytest.approx(1 / 6)}
    summaries = [i for r in records if r.WhichOneof("record_type") == "summary" for i in r.summary.update]
    final = checkpoints_of(db, job_id)[-1]
    assert any(item_key(i) == "checkpoint/final" and final.sha256 in i.value_json for i in summaries)
    assert next(r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit") == 0


def test_mlflow_file_store_run_has_the_metric_history_params_and_a_finished_status(
    fake_trainer: None, trackers: Settings, db: sessionmaker[Session], storage: Storage, tenant: TenantKey
) -> None:
    from mlflow.tracking import MlflowClient

    mlflow = {"type": "mlflow", "mlflow": {"experiment": "alignd-tests", "run_name": "tiny dpo"}}
    job_id = queue_job(
        db, storage, tenant, trackers.resolved_models_dir, integrations=[mlflow], hyperparameters={"save_every": 2}
    )

    run_job(job_id, trackers)

    assert job_row(db, job_id).status == "succeeded"
    client = MlflowClient(tracking_uri=trackers.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name("alignd-tests")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`alignd.job_id` = '{job_id}'")
    assert run.info.run_name == "tiny dpo" and run.info.status == "FINISHED"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(history) == [(step, pytest.approx(1 / step)) for step in range(1, 7)]
    assert run.data.params["algorithm"] == "dpo" and run.data.params["hyperparameters.max_steps"] == "6"
    final = checkpoints_of(db, job_id)[-1]
    assert final.sha256 in run.data.tags["alignd.checkpoint.final"]
    assert "alignd.checkpoint.intermediate" in run.data.tags  # steps 2 and 4: the latest is kept


def test_a_tracker_whose_package_is_missing_fails_the_job_before_the_trainer_starts(
    fake_trainer: None,
    trackers: Settings,
    db: sessionmaker[Session],
    storage: Storage,
    tenant: TenantKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(integrations.PACKAGES, "mlflow", "mlflow_not_installed_here")
    mlflow = {"type": "mlflow", "mlflow": {"experiment": "alignd-tests"}}
    job_id = queue_job(db, storage, tenant, trackers.resolved_models_dir, integrations=[mlflow])

    run_job(job_id, trackers)

    job = job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "integration_unavailable"
    assert "mlflow_not_installed_here package is not installed" in (job.error_message or "")
    assert "alignd[integrations]" in (job.error_message or "")
    assert not [e for e in events_of(db, job_id) if e.type in ("metrics", "checkpoint")]  # nothing trained


def test_wandb_online_without_the_operators_api_key_fails_the_job_naming_the_setting(
    fake_trainer: None,
    trackers: Settings,
    db: sessionmaker[Session],
    storage: Storage,
    tenant: TenantKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ALIGND_WANDB_MODE", "online")
    reset_caches()
    wandb = {"type": "wandb", "wandb": {"project": "alignd-tests"}}
    job_id = queue_job(db, storage, tenant, trackers.resolved_models_dir, integrations=[wandb])

    run_job(job_id, get_settings())

    job = job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "integration_unavailable"
    assert "ALIGND_WANDB_API_KEY" in (job.error_message or "")
