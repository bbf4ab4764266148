"""A real Celery worker process (`alignd worker`) on Redis, running the real trainer on a tiny model."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.core.broker import send_job
from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs import lifecycle
from api.jobs.events import lock_job
from tests.worker.conftest import (
    add_dataset,
    add_job,
    checkpoints_of,
    events_of,
    job_row,
    request_cancel,
    trainer_pids,
    wait_for,
    wait_for_status,
)


@pytest.fixture
def submit(db: sessionmaker[Session], storage: Storage, tenant, tiny_model: str):  # type: ignore[no-untyped-def]
    """Create a queued DPO job on the tiny model and send it to the broker, as the API does."""

    def submit(base_model: str = tiny_model, **hyperparameters: float) -> str:
        with db() as session:
            dataset = add_dataset(session, storage, tenant.id)
            job_id = add_job(session, tenant.id, dataset.id, base_model, hyperparameters=hyperparameters).id
        send_job(job_id)
        return job_id

    return submit


def statuses(db: sessionmaker[Session], job_id: str) -> list[str]:
    return [e.data["status"] for e in events_of(db, job_id) if e.type == "status"]


@pytest.mark.slow
def test_a_job_delivered_twice_runs_once_to_success(
    start_worker, submit, db: sessionmaker[Session], storage: Storage
) -> None:
    start_worker()
    job_id = submit(max_steps=8, save_every=4)
    send_job(job_id)  # a duplicate delivery, as a broker redelivery would make

    job = wait_for_status(db, job_id, ("succeeded", "failed"), timeout=180)

    assert job.status == "succeeded", job.error_message
    assert job.attempt == 1
    assert statuses(db, job_id) == ["queued", "running", "succeeded"]
    assert [(c.step, c.kind) for c in checkpoints_of(db, job_id)] == [(4, "intermediate"), (8, "final")]
    assert job.output_checkpoint_id == checkpoints_of(db, job_id)[-1].id
    assert set(job.metrics) >= {"loss", "rewards/accuracies", "rewards/margins"}


@pytest.mark.slow
def test_cancelling_a_running_job_stops_the_trainer_and_keeps_the_last_checkpoint(
    start_worker, submit, db: sessionmaker[Session], storage: Storage
) -> None:
    start_worker()
    job_id = submit(max_steps=2000, save_every=3)
    wait_for(lambda: checkpoints_of(db, job_id), 180, "a first checkpoint")
    assert trainer_pids(job_id)

    request_cancel(db, job_id)
    job = wait_for_status(db, job_id, ("cancelled",), timeout=60)

    assert not trainer_pids(job_id)
    assert statuses(db, job_id)[-2:] == ["cancelling", "cancelled"]
    checkpoints = checkpoints_of(db, job_id)
    assert checkpoints and all(storage.exists(c.storage_key) for c in checkpoints)
    assert job.output_checkpoint_id is None and job.progress["step"] < 2000


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_finishes_on_a_new_worker_from_its_last_checkpoint(
    start_worker, submit, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    total = 60
    first = start_worker()
    job_id = submit(max_steps=total, save_every=5)
    wait_for(lambda: checkpoints_of(db, job_id), 180, "a first checkpoint")
    trainers = trainer_pids(job_id)
    assert trainers

    first.kill()  # SIGKILL to the worker's main and pool processes; the trainer dies with its parent
    wait_for(lambda: not trainer_pids(job_id), 10, "the trainer to die with its worker")
    assert job_row(db, job_id).status == "running"  # until the lease runs out
    start_worker()
    job = wait_for_status(db, job_id, ("succeeded", "failed", "cancelled"), timeout=240)

    assert job.status == "succeeded", job.error_message
    assert job.attempt == 2
    assert statuses(db, job_id) == ["queued", "running", "queued", "running", "succeeded"]
    events = events_of(db, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no gaps, no duplicates
    loss_steps = [e.data["step"] for e in events if e.type == "metrics" and "loss" in e.data["values"]]
    assert loss_steps == list(range(1, total + 1))  # every step once, in order
    checkpoint_steps = [(c.step, c.kind) for c in checkpoints_of(db, job_id)]
    assert len(checkpoint_steps) == len(set(checkpoint_steps)) and checkpoint_steps[-1] == (total, "final")
    # The second attempt really resumed: its trainer started after the first checkpoint.
    resumed_events = worker_settings.resolved_work_dir / "jobs" / job_id / "attempt-2" / "events.jsonl"
    first_step = next(e["step"] for e in map(_json, resumed_events.read_text().splitlines()) if e["type"] == "metrics")
    assert first_step > 5
    resumed = [e.data["message"] for e in events if e.type == "log" and "resuming" in e.data["message"]]
    assert resumed == [f"attempt 2: resuming from the checkpoint of step {first_step - 1}"]
    assert Counter(e.type for e in events)["checkpoint"] == len(checkpoint_steps)


def pause(db: sessionmaker[Session], job_id: str) -> None:
    """What the API's pause does."""
    with db() as session, session.begin():
        lifecycle.request_pause(session, lock_job(session, job_id))


def resume(db: sessionmaker[Session], job_id: str) -> None:
    """What the API's resume does: paused -> queued, sent to the broker after the commit."""
    with db() as session:
        with session.begin():
            assert lifecycle.resume(session, lock_job(session, job_id))
        assert lifecycle.enqueue(session, [job_id], send_job) == [job_id]


def losses(db: sessionmaker[Session], job_id: str) -> dict[int, float]:
    return {e.data["step"]: e.data["values"]["loss"] for e in events_of(db, job_id) if e.type == "metrics"
            and "loss" in e.data["values"]}  # fmt: skip


@pytest.mark.slow
def test_a_paused_and_resumed_job_trains_the_same_losses_as_an_uninterrupted_one(
    start_worker, submit, db: sessionmaker[Session], storage: Storage
) -> None:
    total = 100  # long enough that the pause lands well before the end (a tiny step takes ~0.3 s)
    start_worker()
    paused_id = submit(max_steps=total, save_every=1000, learning_rate=5e-3)
    wait_for(lambda: (job_row(db, paused_id).progress or {}).get("step", 0) >= 3, 180, "step 3")
    pause(db, paused_id)
    paused = wait_for_status(db, paused_id, ("paused", "failed", "succeeded"), timeout=120)
    assert paused.status == "paused", paused.error_message
    assert not trainer_pids(paused_id) and paused.worker_id is None
    (saved,) = checkpoints_of(db, paused_id)
    assert saved.kind == "intermediate" and saved.step == paused.progress["step"] < total

    # The worker is free: an identical job runs through uninterrupted while the first one is paused.
    uninterrupted_id = submit(max_steps=total, save_every=1000, learning_rate=5e-3)
    assert wait_for_status(db, uninterrupted_id, ("succeeded", "failed"), timeout=240).status == "succeeded"
    assert job_row(db, paused_id).status == "paused"
    resume(db, paused_id)
    job = wait_for_status(db, paused_id, ("succeeded", "failed", "cancelled"), timeout=240)

    assert job.status == "succeeded", job.error_message
    assert statuses(db, paused_id) == ["queued", "running", "pausing", "paused", "queued", "running", "succeeded"]
    events = events_of(db, paused_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no gaps, no duplicates
    loss_steps = [e.data["step"] for e in events if e.type == "metrics" and "loss" in e.data["values"]]
    assert loss_steps == list(range(1, total + 1))  # every step once, in order
    resumed = [e.data["message"] for e in events if e.type == "log" and "resuming" in e.data["message"]]
    assert resumed == [f"attempt 2: resuming from the checkpoint of step {saved.step}"]
    assert losses(db, paused_id) == pytest.approx(losses(db, uninterrupted_id), rel=1e-5, abs=1e-7)
    assert [(c.step, c.kind) for c in checkpoints_of(db, paused_id)] == [(saved.step, "intermediate"), (total, "final")]
    assert job.max_attempts == 4 and job.attempt == 2  # the pause used up no attempt


@pytest.mark.slow
def test_a_worker_sent_sigterm_has_the_trainer_save_its_step_and_another_worker_resumes_from_that_step(
    start_worker, submit, db: sessionmaker[Session], worker_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = 100  # long enough that the shutdown lands well before the end (a tiny step takes ~0.3 s)
    monkeypatch.setenv("ALIGND_LEASE_SECONDS", "60")  # a job left to its lease could not finish in time
    workers = [start_worker(wait=False) for _ in range(2)]
    for worker in workers:
        worker.wait_ready()
    job_id = submit(max_steps=total, save_every=1000)
    wait_for(lambda: (job_row(db, job_id).progress or {}).get("step", 0) >= 3, 180, "step 3")
    first = next(w for w in workers if w.runs(job_row(db, job_id)))

    first.terminate()  # SIGTERM to the worker's main process, as `docker stop` sends it
    assert first.process.wait(60) == 0
    job = wait_for_status(db, job_id, ("succeeded", "failed", "cancelled"), timeout=240)

    assert job.status == "succeeded", job.error_message
    assert statuses(db, job_id) == ["queued", "running", "queued", "running", "succeeded"]
    saved = checkpoints_of(db, job_id)[0]
    assert saved.kind == "intermediate" and 3 <= saved.step < total  # no periodic checkpoint: the shutdown's
    events = events_of(db, job_id)
    resumed = [e.data["message"] for e in events if e.type == "log" and "resuming" in e.data["message"]]
    assert resumed == [f"attempt 2: resuming from the checkpoint of step {saved.step}"]
    resumed_events = worker_settings.resolved_work_dir / "jobs" / job_id / "attempt-2" / "events.jsonl"
    trained = [e["step"] for e in map(_json, resumed_events.read_text().splitlines()) if e["type"] == "metrics"]
    assert trained[0] == saved.step + 1  # the second attempt trained only what the first had not
    loss_steps = [e.data["step"] for e in events if e.type == "metrics" and "loss" in e.data["values"]]
    assert loss_steps == list(range(1, total + 1))
    assert job.max_attempts == 4  # the attempt that saved is given back


def _json(line: str) -> dict:  # type: ignore[type-arg]
    import json

    return json.loads(line)
