"""The runner called as a plain function, with a stand-in trainer that speaks the event protocol.

These pin down the relay rules quickly; tests/worker/test_worker_process.py runs the real trainer in a
real Celery worker process.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs import lifecycle
from api.jobs.events import lock_job
from tests.hub_cache import cached_hub_model
from tests.worker.conftest import add_dataset, add_job, checkpoints_of, events_of, job_row, request_cancel, wait_for
from worker import runner
from worker.runner import run_job


@pytest.fixture
def queued_job(db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings):  # type: ignore[no-untyped-def]
    assert worker_settings.hub_cache_dir is not None
    cached_hub_model(worker_settings.hub_cache_dir, "org/hub-model")  # the default base model, as a download leaves it

    def make(base_model: str = "org/hub-model", **fields):  # type: ignore[no-untyped-def]
        with db() as session:
            dataset = add_dataset(session, storage, tenant.id)
            return add_job(session, tenant.id, dataset.id, base_model, **fields).id

    return make


@pytest.mark.parametrize(("backend", "store"), [("postgres", "file"), ("sqlite", "file"), ("postgres", "s3")])
def test_a_job_runs_to_success_with_events_in_order_and_its_final_checkpoint_as_output(
    fake_trainer: None, queued_job, db: sessionmaker[Session], storage: Storage, worker_settings: Settings
) -> None:
    job_id = queued_job(hyperparameters={"max_steps": 9, "save_every": 4})

    run_job(job_id, worker_settings)

    job = job_row(db, job_id)
    assert job.status == "succeeded"
    assert job.attempt == 1 and job.finished_at is not None and job.lease_expires_at is None
    assert job.progress == {"step": 9, "total_steps": 9, "epoch": 1.0, "eta_seconds": 0.0}
    assert job.metrics == {"loss": pytest.approx(1 / 9)}
    events = events_of(db, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
    assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(1, 10))
    checkpoints = checkpoints_of(db, job_id)
    assert [(c.step, c.kind) for c in checkpoints] == [(4, "intermediate"), (8, "intermediate"), (9, "final")]
    assert job.output_checkpoint_id == checkpoints[-1].id
    for checkpoint in checkpoints:
        import hashlib

        with storage.open(checkpoint.storage_key) as archive:
            assert hashlib.sha256(archive.read()).hexdigest() == checkpoint.sha256
        assert storage.size(checkpoint.storage_key) == checkpoint.bytes


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_two_deliveries_at_once_run_the_job_once(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    job_id = queued_job()
    threads = [threading.Thread(target=run_job, args=(job_id, worker_settings)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    job = job_row(db, job_id)
    assert job.status == "succeeded" and job.attempt == 1
    assert [e.data["status"] for e in events_of(db, job_id) if e.type == "status"] == ["queued", "running", "succeeded"]
    run_job(job_id, worker_settings)  # a late redelivery of a finished job changes nothing
    assert job_row(db, job_id).attempt == 1


def test_an_error_event_fails_the_job_with_the_trainers_code_and_message(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    (worker_settings.resolved_models_dir / "error").mkdir(parents=True)  # the fake acts on the model's name
    job_id = queued_job(base_model="error")
    run_job(job_id, worker_settings)

    job = job_row(db, job_id)
    assert job.status == "failed"
    assert (job.error_code, job.error_message) == ("invalid_data", "dataset row 3: 'chosen' is empty")


def test_a_trainer_that_dies_without_an_error_event_fails_the_job_with_a_sentence_and_its_last_output(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    (worker_settings.resolved_models_dir / "crash").mkdir(parents=True)
    job_id = queued_job(base_model="crash")
    run_job(job_id, worker_settings)

    job = job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "trainer_crashed"
    assert job.error_message.startswith("The trainer stopped unexpectedly with exit code 1 without reporting an error.")
    assert "RuntimeError: the fake trainer crashed on purpose" in job.error_message


def test_an_unknown_model_name_fails_the_job_saying_how_to_add_it(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    job_id = queued_job(base_model="no-such-model")
    run_job(job_id, worker_settings)

    job = job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "invalid_reference"
    assert "alignd models add no-such-model" in job.error_message


@pytest.mark.parametrize("store", ["s3"])
def test_a_job_whose_store_cannot_be_reached_fails_within_seconds_saying_so(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings, monkeypatch, store: str
) -> None:
    from api.core import reset_caches
    from api.core.settings import get_settings
    from tests.services import free_port

    job_id = queued_job()  # its dataset is in the bucket
    monkeypatch.setenv("ALIGND_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # the store went away
    monkeypatch.setenv("ALIGND_S3_TIMEOUT_SECONDS", "2")
    reset_caches()

    started = time.monotonic()
    run_job(job_id, get_settings())

    job = job_row(db, job_id)
    assert time.monotonic() - started < 30
    assert job.status == "failed" and job.error_code == "storage_unavailable"
    assert "the artifact store s3://" in job.error_message and "could not download" in job.error_message


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_cancelling_a_running_job_stops_the_trainer_and_keeps_its_checkpoints(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.3")
    job_id = queued_job(hyperparameters={"max_steps": 200, "save_every": 2})
    thread = threading.Thread(target=run_job, args=(job_id, worker_settings))
    thread.start()
    wait_for(lambda: checkpoints_of(db, job_id), 60, "a first checkpoint")
    request_cancel(db, job_id)
    thread.join(60)

    job = job_row(db, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert [e.data["status"] for e in events_of(db, job_id) if e.type == "status"][-2:] == ["cancelling", "cancelled"]
    checkpoints = checkpoints_of(db, job_id)
    assert checkpoints and all(c.kind == "intermediate" for c in checkpoints)
    assert job.progress is not None and job.progress["step"] < 200


def test_the_trainer_runs_under_accelerate_launch_when_a_job_spans_several_gpus(worker_settings: Settings) -> None:
    spec, out, events = Path("/w/SPEC.json"), Path("/w/output"), Path("/w/events.jsonl")
    args = ["run", "/w/SPEC.json", "--output", "/w/output", "--events", "/w/events.jsonl"]
    single = runner.trainer_command(spec, out, events, None, worker_settings)
    assert single == [sys.executable, "-m", "trainer", *args]

    several = worker_settings.model_copy(update={"gpus_per_job": 4})
    command = runner.trainer_command(spec, out, events, Path("/w/resume"), several)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "4", "--module", "trainer"]
    assert command == [*launch, *args, "--resume", "/w/resume"]


def request_pause(db: sessionmaker[Session], job_id: str) -> None:
    """What the API's pause does to a running job."""
    with db() as session, session.begin():
        lifecycle.request_pause(session, lock_job(session, job_id))


def resume(db: sessionmaker[Session], job_id: str) -> None:
    """What the API's resume does to a paused job (run_job is then called directly, without a broker)."""
    with db() as session, session.begin():
        assert lifecycle.resume(session, lock_job(session, job_id))


def test_pausing_a_running_job_saves_at_the_step_boundary_frees_the_worker_and_resume_continues_from_there(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings, monkeypatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.2")
    job_id = queued_job(hyperparameters={"max_steps": 40, "save_every": 100})  # no periodic checkpoint
    thread = threading.Thread(target=run_job, args=(job_id, worker_settings))
    thread.start()
    wait_for(lambda: (job_row(db, job_id).progress or {}).get("step", 0) >= 3, 60, "step 3")
    request_pause(db, job_id)
    thread.join(60)
    assert not thread.is_alive(), "the worker is free once the job is paused"

    job = job_row(db, job_id)
    assert (job.status, job.worker_id, job.lease_expires_at, job.max_attempts) == ("paused", None, None, 4)
    (checkpoint,) = checkpoints_of(db, job_id)
    paused = events_of(db, job_id)[-1].data
    assert paused == {"status": "paused", "previous": "pausing", "reason": "paused at a step boundary",
                      "step": checkpoint.step}  # fmt: skip
    assert checkpoint.kind == "intermediate" and 3 <= checkpoint.step < 40
    assert max(e.data["step"] for e in events_of(db, job_id) if e.type == "metrics") == checkpoint.step

    resume(db, job_id)
    run_job(job_id, worker_settings)
    job = job_row(db, job_id)
    assert job.status == "succeeded" and job.attempt == 2
    logs = [e.data["message"] for e in events_of(db, job_id) if e.type == "log"]
    assert f"attempt 2: resuming from the checkpoint of step {checkpoint.step}" in logs
    steps = [e.data["step"] for e in events_of(db, job_id) if e.type == "metrics"]
    assert steps == list(range(1, 41))  # gap-free, no step twice
    statuses = [e.data["status"] for e in events_of(db, job_id) if e.type == "status"]
    assert statuses == ["queued", "running", "pausing", "paused", "queued", "running", "succeeded"]


def test_a_job_paused_while_queued_is_not_run_until_resumed(
    fake_trainer: None, queued_job, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    job_id = queued_job(hyperparameters={"max_steps": 3})
    request_pause(db, job_id)
    run_job(job_id, worker_settings)  # a delivery sent before the pause
    assert job_row(db, job_id).status == "paused" and not events_of(db, job_id)[-1].data.get("worker_id")
    resume(db, job_id)
    run_job(job_id, worker_settings)
    assert job_row(db, job_id).status == "succeeded"
