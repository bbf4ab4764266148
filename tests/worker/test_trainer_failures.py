"""How the runner reports a real trainer that fails: in the trainer's words, or in a sentence of its own.

The runner is called as the Celery task calls it (run_job), in a thread; the trainer is the real one.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest
from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.core.storage import Storage
from tests.worker.conftest import add_dataset, add_job, job_row, trainer_pids, wait_for
from worker.runner import run_job


@pytest.fixture
def queued(db: sessionmaker[Session], storage: Storage, tenant):  # type: ignore[no-untyped-def]
    def queued(base_model: str, **hyperparameters: int) -> str:
        with db() as session:
            dataset = add_dataset(session, storage, tenant.id)
            return add_job(session, tenant.id, dataset.id, base_model, hyperparameters=hyperparameters).id

    return queued


def test_a_model_that_does_not_load_fails_the_job_with_the_trainers_explanation(
    queued, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    broken = worker_settings.resolved_models_dir / "broken"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    job_id = queued("broken")

    run_job(job_id, worker_settings)

    job = job_row(db, job_id)
    assert job.status == "failed"
    assert job.error_code == "model_load_failed"
    assert "Traceback" not in job.error_message and str(broken) in job.error_message


@pytest.mark.slow
def test_a_trainer_killed_by_the_system_fails_the_job_saying_so_with_its_last_output(
    queued, tiny_model: str, db: sessionmaker[Session], worker_settings: Settings
) -> None:
    job_id = queued(tiny_model, max_steps=2000)
    runner = threading.Thread(target=run_job, args=(job_id, worker_settings))
    runner.start()
    wait_for(lambda: (job_row(db, job_id).progress or {}).get("step"), 180, "the first training step")
    for pid in trainer_pids(job_id):
        os.kill(pid, signal.SIGKILL)  # what the kernel's out-of-memory killer does
    runner.join(60)

    job = job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "trainer_crashed"
    assert job.error_message.startswith("The trainer was killed by SIGKILL without reporting an error")
    assert "out of memory" in job.error_message
