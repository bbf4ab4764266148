"""The fault suite: real `alignd worker` processes (running the fast fake trainer), real Postgres and
Redis, and a fault injected at a chosen moment of a job. Every job must end succeeded from its last
checkpoint (or failed with a reason), with its events gap-free and without duplicates, no trainer
left behind, and every checkpoint row matched by its archive in the store and the other way round.

The moments are random but seeded (ALIGND_FAULT_SEED, default 12; a failure prints its seed), and
the windows are widened with the fake worker's delays (tests/worker/fake_worker.py). Every wait has
a deadline. Longer, repeated variants carry the `soak` marker (`make soak`).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.core.broker import send_job
from api.core.db import utcnow
from api.core.settings import Settings
from api.core.storage import FileStorage, Storage
from tests.conftest import TenantKey
from tests.hub_cache import cached_hub_model
from tests.services import CuttableProxy, restart_server, s3_client
from tests.worker.conftest import (
    WorkerProcess,
    add_dataset,
    add_job,
    checkpoints_of,
    events_of,
    job_row,
    trainer_pids,
    wait_for,
    wait_for_status,
)

SEED = int(os.environ.get("ALIGND_FAULT_SEED", "12"))
FINAL = ("succeeded", "failed", "cancelled")
STEP_SECONDS = "0.1"
SAMPLES = 2

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def submit(
    db: sessionmaker[Session], storage: Storage, tenant: TenantKey, worker_settings: Settings
) -> Callable[..., str]:
    """Create a queued job for the fake trainer and send it to the broker, as the API does."""
    assert worker_settings.hub_cache_dir is not None
    cached_hub_model(worker_settings.hub_cache_dir, "org/hub-model")  # the base model, as a download leaves it

    def submit(max_steps: int = 20, save_every: int = 5, **fields: Any) -> str:
        with db() as session:
            dataset = add_dataset(session, storage, tenant.id)
            hyperparameters = {"max_steps": max_steps, "save_every": save_every}
            job_id = add_job(
                session, tenant.id, dataset.id, "org/hub-model", hyperparameters=hyperparameters, **fields
            ).id
        send_job(job_id)
        return job_id

    return submit


def fake_env(**extra: str) -> dict[str, str]:
    return {"FAKE_STEP_SECONDS": STEP_SECONDS, "FAKE_SAMPLES": str(SAMPLES), **extra}


def start_workers(start_worker: StartWorker, count: int, **env: str) -> list[WorkerProcess]:
    workers = [start_worker(fake_trainer=True, env=fake_env(**env), wait=False) for _ in range(count)]
    for worker in workers:
        worker.wait_ready()
    return workers


def owner(workers: list[WorkerProcess], db: sessionmaker[Session], job_id: str) -> WorkerProcess:
    job = job_row(db, job_id)
    return next(w for w in workers if w.runs(job))


def statuses(db: sessionmaker[Session], job_id: str) -> list[str]:
    return [e.data["status"] for e in events_of(db, job_id) if e.type == "status"]


def store_keys(storage: Storage, job_id: str) -> set[str]:
    """Checkpoint archives of a job in the (file) store, as listed on disk; hidden temp files count too."""
    assert isinstance(storage, FileStorage)
    folder = storage.root / "checkpoints" / job_id
    return {f"checkpoints/{job_id}/{p.name}" for p in folder.iterdir()} if folder.is_dir() else set()


def assert_job_is_whole(db: sessionmaker[Session], storage: Storage, job_id: str, total: int) -> None:
    """A succeeded job: every event once and in order, every step's metrics and samples once, the
    checkpoints' rows and archives one to one, and no trainer process left."""
    job = job_row(db, job_id)
    assert job.status == "succeeded", (job.error_code, job.error_message)
    events = events_of(db, job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))  # no gaps, no duplicates
    assert [e.data["step"] for e in events if e.type == "metrics"] == list(range(1, total + 1))
    samples = Counter((e.data["step"], e.data["prompt"]) for e in events if e.type == "sample")
    assert samples == Counter({(s, f"prompt {i}"): 1 for s in range(1, total + 1) for i in range(SAMPLES)})
    checkpoints = checkpoints_of(db, job_id)
    assert len({(c.step, c.kind) for c in checkpoints}) == len(checkpoints)
    assert checkpoints[-1].kind == "final" and job.output_checkpoint_id == checkpoints[-1].id
    assert Counter(e.type for e in events)["checkpoint"] == len(checkpoints)
    assert store_keys(storage, job_id) == {c.storage_key for c in checkpoints}  # no orphan, no missing archive
    assert not trainer_pids(job_id)


# --- SIGKILL of the worker ------------------------------------------------------------------------

# phase -> (the fake worker's delay that widens its window, the seconds of random delay after the phase began)
PHASES: dict[str, tuple[dict[str, str], tuple[float, float]]] = {
    "preparation": ({"FAKE_PREPARE_SECONDS": "2"}, (0.0, 1.5)),
    "training": ({}, (0.0, 1.0)),
    "checkpoint_upload": ({"FAKE_UPLOAD_SECONDS": "2"}, (0.0, 1.5)),
    "final_status_write": ({"FAKE_FINAL_WRITE_SECONDS": "2.5"}, (0.8, 1.6)),
}


def phase_began(phase: str, db: sessionmaker[Session], storage: Storage, settings: Settings, job_id: str) -> bool:
    if phase == "preparation":
        return job_row(db, job_id).status == "running"
    if phase == "training":
        return any(e.type == "metrics" for e in events_of(db, job_id))
    if phase == "checkpoint_upload":
        return bool(store_keys(storage, job_id))
    events = settings.resolved_work_dir / "jobs" / job_id / "attempt-1" / "events.jsonl"
    return events.exists() and '"done"' in events.read_text()


def assert_in_phase(phase: str, db: sessionmaker[Session], storage: Storage, job_id: str) -> None:
    """What the job looked like when its worker was killed: the fault hit the phase it aimed at."""
    job = job_row(db, job_id)
    assert job.status == "running" and job.attempt == 1
    if phase == "preparation":
        assert not any(e.type == "metrics" for e in events_of(db, job_id))
    elif phase == "checkpoint_upload":  # an archive is in the store, its row not yet committed
        assert store_keys(storage, job_id) - {c.storage_key for c in checkpoints_of(db, job_id)}


def kill_worker_in_phase(
    phase: str,
    seed: int,
    start_worker: StartWorker,
    submit: Callable[..., str],
    db: sessionmaker[Session],
    storage: Storage,
    settings: Settings,
) -> None:
    rng = random.Random(f"{seed}-{phase}")
    delays, (low, high) = PHASES[phase]
    workers = start_workers(start_worker, 2, **delays)
    target, other = submit(), submit()
    wait_for(lambda: phase_began(phase, db, storage, settings, target), 60, f"{target} to reach {phase}")
    time.sleep(rng.uniform(low, high))
    victim = owner(workers, db, target)
    assert_in_phase(phase, db, storage, target)

    victim.kill()  # SIGKILL to the worker's main and pool processes; the trainer dies with its parent
    wait_for(lambda: not trainer_pids(target), 10, "the trainer to die with its worker")
    workers.append(start_worker(fake_trainer=True, env=fake_env(**delays)))

    for job_id in (target, other):
        wait_for_status(db, job_id, FINAL, timeout=120)
        assert_job_is_whole(db, storage, job_id, total=20)
    assert statuses(db, target) == ["queued", "running", "queued", "running", "succeeded"]
    resumed = [e.data["message"] for e in events_of(db, target) if e.type == "log" and "resuming" in e.data["message"]]
    assert len(resumed) == 1 and resumed[0].startswith("attempt 2: resuming from")


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_worker_killed_at_a_seeded_random_moment_of_a_phase_loses_nothing(
    phase: str, start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
    worker_settings: Settings,
) -> None:  # fmt: skip
    kill_worker_in_phase(phase, SEED, start_worker, submit, db, storage, worker_settings)


@pytest.mark.soak
@pytest.mark.parametrize("seed", range(SEED, SEED + 5))
@pytest.mark.parametrize("phase", list(PHASES))
def test_soak_a_worker_killed_at_many_seeded_moments_loses_nothing(
    phase: str, seed: int, start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session],
    storage: Storage, worker_settings: Settings,
) -> None:  # fmt: skip
    kill_worker_in_phase(phase, seed, start_worker, submit, db, storage, worker_settings)


def test_a_job_whose_worker_is_killed_on_its_last_attempt_fails_saying_why(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session]
) -> None:
    (worker,) = start_workers(start_worker, 1)
    job_id = submit(max_attempts=1)
    wait_for(lambda: any(e.type == "metrics" for e in events_of(db, job_id)), 60, "training to start")
    worker.kill()
    start_workers(start_worker, 1)  # its reaper finds the expired lease

    job = wait_for_status(db, job_id, FINAL, timeout=60)

    assert job.status == "failed" and job.error_code == "worker_lost"
    assert "died 1 times" in (job.error_message or "") and statuses(db, job_id)[-1] == "failed"
    assert not trainer_pids(job_id)


# --- SIGKILL of the trainer alone -------------------------------------------------------------------


def test_a_trainer_killed_alone_fails_its_job_with_the_signal_named_and_the_worker_runs_the_next_job(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Decision: a trainer killed by a signal (the OOM killer, an operator) while its worker lives is
    # not retried: the worker saw it die and a retry would most likely die the same way. The job fails
    # with a reason naming the signal and the usual cause; its checkpoints stay. Retries are for
    # workers that vanish (lease expiry), where the worker could not say what happened.
    pids = tmp_path / "pids"
    pids.mkdir()
    start_workers(start_worker, 1, FAKE_PID_DIR=str(pids))
    job_id = submit(max_steps=60)
    wait_for(lambda: checkpoints_of(db, job_id), 60, "a first checkpoint")
    (pid_file,) = pids.iterdir()
    os.kill(int(pid_file.stem), signal.SIGKILL)

    job = wait_for_status(db, job_id, FINAL, timeout=30)

    assert job.status == "failed" and job.error_code == "trainer_crashed"
    assert "killed by SIGKILL" in (job.error_message or "") and job.attempt == 1
    assert all(storage.exists(c.storage_key) for c in checkpoints_of(db, job_id))
    next_job = submit(max_steps=5)
    assert wait_for_status(db, next_job, FINAL, timeout=60).status == "succeeded"


# --- warm shutdown ---------------------------------------------------------------------------------


def test_a_worker_sent_sigterm_saves_at_the_step_boundary_and_another_worker_resumes_from_that_step_within_seconds(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    # A lease of a minute: a job that waited for its lease to expire could not finish in time.
    workers = start_workers(start_worker, 2, ALIGND_LEASE_SECONDS="60")
    job_id = submit(max_steps=60, save_every=50)  # no periodic checkpoint before the shutdown
    wait_for(lambda: (job_row(db, job_id).progress or {}).get("step", 0) >= 3, 60, "step 3")
    first = owner(workers, db, job_id)

    first.terminate()
    stopped = time.monotonic()
    wait_for(lambda: job_row(db, job_id).attempt == 2, 15, "another worker to claim the job")
    claimed_after = time.monotonic() - stopped
    assert first.process.wait(20) == 0  # the warm shutdown completes instead of waiting for the job
    job = wait_for_status(db, job_id, FINAL, timeout=60)

    assert claimed_after < 10, claimed_after
    assert statuses(db, job_id) == ["queued", "running", "queued", "running", "succeeded"]
    handed_back = [e.data for e in events_of(db, job_id) if e.type == "status" and e.data["status"] == "queued"][1]
    assert handed_back["reason"] == "the worker is shutting down" and handed_back["saved"] is True
    saved = checkpoints_of(db, job_id)[0]
    assert saved.kind == "intermediate" and 3 <= saved.step < 50
    logs = [e.data["message"] for e in events_of(db, job_id) if e.type == "log"]
    assert f"attempt 2: resuming from the checkpoint of step {saved.step}" in logs
    assert job.max_attempts == 4  # nothing was lost: the attempt is given back
    running = [e.data for e in events_of(db, job_id) if e.type == "status" and e.data["status"] == "running"]
    assert running[0]["worker_id"] != running[1]["worker_id"] and first.runs(job) is False
    assert_job_is_whole(db, storage, job_id, total=60)


def test_a_worker_sent_sigterm_mid_step_longer_than_the_grace_hands_its_job_back_without_saving(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
) -> None:  # fmt: skip
    (worker,) = start_workers(start_worker, 1, ALIGND_LEASE_SECONDS="60", FAKE_STEP_SECONDS="30")
    job_id = submit(max_steps=4, save_every=1)
    wait_for(lambda: job_row(db, job_id).status == "running" and trainer_pids(job_id), 60, "the trainer to start")

    worker.terminate()
    assert worker.process.wait(40) == 0
    job = job_row(db, job_id)
    assert job.status == "queued" and job.attempt == 1 and job.max_attempts == 3  # the attempt counts
    handed_back = [e.data for e in events_of(db, job_id) if e.type == "status"][-1]
    assert handed_back["saved"] is False and not checkpoints_of(db, job_id)
    assert not trainer_pids(job_id)


# --- Postgres and Redis restarted --------------------------------------------------------------------


def test_workers_and_the_api_ride_through_a_postgres_restart_mid_job_without_losing_an_event(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
    client: TestClient, auth: dict[str, str], postgres_server_url: str,
) -> None:  # fmt: skip
    (worker,) = start_workers(start_worker, 1)
    job_id = submit(max_steps=60, save_every=10)
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200  # the API holds a pooled connection
    wait_for(lambda: checkpoints_of(db, job_id), 60, "a first checkpoint")

    restart_server(postgres_server_url, down_seconds=2)  # every connection dies; the trainer keeps writing

    response = client.get(f"/v1/jobs/{job_id}", headers=auth)  # pool_pre_ping replaces the dead connection
    assert response.status_code == 200, response.text
    job = wait_for_status(db, job_id, FINAL, timeout=90)
    assert job.attempt == 1  # rode through: no requeue
    assert statuses(db, job_id) == ["queued", "running", "succeeded"]
    assert_job_is_whole(db, storage, job_id, total=60)
    assert "database unreachable; retrying the batch" in worker.log.read_text()  # the relay did ride through


def test_queued_jobs_whose_messages_redis_lost_still_run_once_and_the_running_job_finishes(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
    redis_url: str,
) -> None:  # fmt: skip
    start_workers(start_worker, 1, ALIGND_RESEND_UNCLAIMED_SECONDS="3")
    running = submit(max_steps=40)
    wait_for(lambda: job_row(db, running).status == "running", 60, "the first job to start")
    queued = [submit(max_steps=10) for _ in range(3)]  # their messages wait in Redis behind the running job

    restarted = utcnow()
    restart_server(redis_url, down_seconds=1)  # no persistence: the three messages are gone

    for job_id in [running, *queued]:
        wait_for_status(db, job_id, FINAL, timeout=120)
    for job_id, total in [(running, 40)] + [(job_id, 10) for job_id in queued]:
        assert statuses(db, job_id) == ["queued", "running", "succeeded"]  # ran once: one claim, one attempt
        assert job_row(db, job_id).attempt == 1
        assert_job_is_whole(db, storage, job_id, total=total)
    assert all(job_row(db, job_id).enqueued_at > restarted for job_id in queued)  # a reaper sent them again
    runs = sorted((job_row(db, j).started_at, job_row(db, j).finished_at) for j in [running, *queued])
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(runs))  # one slot: never two at once


# --- the broker's visibility timeout ------------------------------------------------------------------


def test_a_job_longer_than_the_visibility_timeout_is_not_run_twice(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], storage: Storage,
) -> None:  # fmt: skip
    workers = start_workers(start_worker, 2, FAKE_VISIBILITY_TIMEOUT="2")
    job_id = submit(max_steps=70, save_every=10)  # about 7 s: Redis redelivers the unacknowledged message

    job = wait_for_status(db, job_id, FINAL, timeout=90)

    logs = "".join(w.log.read_text(errors="replace") for w in workers)
    assert f"job {job_id} is not queued any more" in logs  # the redelivery happened and found it claimed
    assert job.attempt == 1 and statuses(db, job_id) == ["queued", "running", "succeeded"]
    assert_job_is_whole(db, storage, job_id, total=70)


# --- the artifact store failing -------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["s3"])
def test_a_job_whose_artifact_store_goes_down_fails_saying_so_and_leaves_nothing_half_written(
    start_worker: StartWorker, submit: Callable[..., str], db: sessionmaker[Session], worker_settings: Settings,
    s3_endpoint: str,
) -> None:  # fmt: skip
    # Decision: not retried. A store that is down needs an operator, and every attempt would fail the
    # same way; the job fails at once naming the store, and the checkpoints it saved before stay.
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = CuttableProxy((host, int(port)))  # the worker reaches the S3 server only through it
    start_workers(start_worker, 1, ALIGND_S3_ENDPOINT_URL=proxy.url, FAKE_CHECKPOINT_BYTES=str(2 * 1024**2))
    job_id = submit(max_steps=60)
    wait_for(lambda: checkpoints_of(db, job_id), 60, "a first checkpoint")

    proxy.cut()
    job = wait_for_status(db, job_id, FINAL, timeout=90)
    proxy.restore()

    assert job.status == "failed" and job.error_code == "storage_unavailable", (job.error_code, job.error_message)
    assert "artifact store" in (job.error_message or "") and not trainer_pids(job_id)
    bucket, prefix = worker_settings.resolved_storage_url.removeprefix("s3://").split("/", 1)
    listed = s3_client(s3_endpoint).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/checkpoints/{job_id}/")
    keys = {item["Key"].removeprefix(f"{prefix}/") for item in listed.get("Contents", [])}
    assert keys == {c.storage_key for c in checkpoints_of(db, job_id)}  # no archive without its row, nor the reverse
    assert all(c.kind == "intermediate" for c in checkpoints_of(db, job_id)) and job.output_checkpoint_id is None
