"""Worker fixtures: fast leases, rows arranged directly in the database, real worker processes.

Built on tests/conftest.py (a migrated Postgres per test and a session Redis as broker). The worker
runs as a real process, `alignd worker`, never in Celery's eager mode.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.core.storage import Storage, storage_from_url
from api.datasets.models import Dataset
from api.jobs.events import append_events, lock_job
from api.jobs.lifecycle import transition
from api.jobs.models import Job, JobEvent
from tests.shared_data import shared_data

HH_PAIRS = "hh-rlhf-harmless-base.jsonl"


def short_preference_pairs(count: int = 32) -> bytes:
    """The `count` shortest HH-RLHF pairs (real rows, unedited) whose completions are not blank.

    Short, so the tiny model trains a step in a fraction of a second without truncating every row.
    """
    import json

    def usable(line: str) -> bool:
        row = json.loads(line)
        completions = [row[k].rsplit("\n\nAssistant:", 1)[-1].strip() for k in ("chosen", "rejected")]
        return all(completions) and row["chosen"] != row["rejected"]

    lines = [line for line in shared_data(HH_PAIRS).read_text().splitlines(keepends=True) if usable(line)]
    return "".join(sorted(lines, key=len)[:count]).encode()


@pytest.fixture
def worker_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with leases short enough for tests (a dead worker is noticed within seconds)."""
    from api.core import reset_caches
    from api.core.settings import get_settings

    monkeypatch.setenv("ALIGND_HEARTBEAT_SECONDS", "0.5")
    monkeypatch.setenv("ALIGND_LEASE_SECONDS", "5")
    monkeypatch.setenv("ALIGND_REAP_INTERVAL_SECONDS", "1")
    monkeypatch.setenv("ALIGND_WORKER_GPUS", "0")
    monkeypatch.setenv("ALIGND_EVENT_BATCH_SIZE", "7")  # small, so batching is exercised
    reset_caches()
    return get_settings()


@pytest.fixture
def db(worker_settings: Settings) -> sessionmaker[Session]:
    from worker.db import session_factory

    return session_factory(worker_settings)


@pytest.fixture
def storage(worker_settings: Settings) -> Storage:
    return storage_from_url(worker_settings.resolved_storage_url, worker_settings)


@pytest.fixture
def fake_trainer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs tests/worker/fake_trainer.py instead of `python -m trainer` (in this process only;
    `start_worker(fake_trainer=True)` does the same in a worker process)."""
    from tests.worker.fake_worker import fake_trainer_command
    from worker import runner

    monkeypatch.setattr(runner, "trainer_command", fake_trainer_command)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture
def tiny_model(worker_settings: Settings, tiny_model_dir: Path) -> str:
    """The tiny Llama installed in the server's model directory; returns its MODEL_REF (a name)."""
    shutil.copytree(tiny_model_dir, worker_settings.resolved_models_dir / "tiny")
    return "tiny"


def add_dataset(session: Session, storage: Storage, tenant_id: str) -> Dataset:
    """A stored preference dataset of short real pairs, as an upload leaves it."""
    import io

    data = short_preference_pairs()
    key = f"datasets/{tenant_id}/{uuid.uuid4().hex}.jsonl"
    stored = storage.put_stream(key, io.BytesIO(data))
    dataset = Dataset(
        tenant_id=tenant_id,
        name="hh-rlhf-short.jsonl",
        kind="preference",
        format="implicit_prompt",
        rows=data.count(b"\n"),
        bytes=stored.bytes,
        sha256=stored.sha256,
        storage_key=key,
    )
    session.add(dataset)
    session.commit()
    return dataset


def add_job(session: Session, tenant_id: str, dataset_id: str, base_model: str, **fields: Any) -> Job:
    """A queued job with its first status event, as the API creates it."""
    hyperparameters = {"max_steps": 6, "batch_size": 2, "max_length": 256, "max_prompt_length": 192}
    hyperparameters.update(fields.pop("hyperparameters", {}))
    job = Job(
        tenant_id=tenant_id,
        algorithm="dpo",
        base_model=base_model,
        dataset_id=dataset_id,
        hyperparameters=hyperparameters,
        **fields,
    )
    session.add(job)
    session.flush()
    append_events(session, job, [("status", {"status": "queued"})])
    session.commit()
    return job


def request_cancel(db: sessionmaker[Session], job_id: str) -> None:
    """What the API's cancel does to a running job."""
    with db() as session, session.begin():
        job = lock_job(session, job_id)
        transition(session, job, "cancelling")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_row(db: sessionmaker[Session], job_id: str) -> Job:
    with db() as session:
        return session.get_one(Job, job_id)


def wait_for_status(db: sessionmaker[Session], job_id: str, statuses: tuple[str, ...], timeout: float) -> Job:
    return wait_for(
        lambda: (job := job_row(db, job_id)).status in statuses and job,
        timeout,
        f"job {job_id} to become one of {statuses}",
    )


def events_of(db: sessionmaker[Session], job_id: str) -> list[JobEvent]:
    with db() as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def checkpoints_of(db: sessionmaker[Session], job_id: str) -> list[Checkpoint]:
    with db() as session:
        return list(session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)))


def trainer_pids(job_id: str) -> list[int]:
    """Processes running `python -m trainer run` (or the fake trainer) for this job."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        trainer = b"trainer" in cmdline or any(part.endswith(b"fake_trainer.py") for part in cmdline)
        if trainer and any(job_id.encode() in part for part in cmdline):
            pids.append(int(proc.name))
    return pids


@dataclass
class WorkerProcess:
    """A real worker process (`alignd worker`) in its own process group."""

    process: subprocess.Popen[bytes]
    log: Path

    def wait_ready(self, timeout: float = 90) -> None:
        wait_for(lambda: b" ready." in self.log.read_bytes() or self._died(), timeout, "the worker to start")
        assert self.process.poll() is None, self.log.read_text()[-3000:]

    def _died(self) -> bool:
        return self.process.poll() is not None

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool processes (trainers die with their parent)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)

    def terminate(self) -> None:
        """SIGTERM to the worker's main process only, as `docker stop` or Kubernetes sends it (warm shutdown)."""
        self.process.send_signal(signal.SIGTERM)

    def pids(self) -> set[int]:
        """The worker's main and pool processes (its process group; trainers run in their own sessions)."""
        group = set()
        for proc in Path("/proc").iterdir():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if proc.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[2]) == self.process.pid:
                group.add(int(proc.name))
        return group

    def runs(self, job: Job) -> bool:
        """Whether this worker holds `job` (job.worker_id is `hostname:pid` of a pool process)."""
        return job.worker_id is not None and int(job.worker_id.rsplit(":", 1)[1]) in self.pids()


@pytest.fixture
def start_worker(worker_settings: Settings, tmp_path: Path) -> Iterator[Callable[[], WorkerProcess]]:
    """Start real worker processes (with the environment of worker_settings); all are killed at the end.

    `start(fake_trainer=True)` runs tests/worker/fake_trainer.py in place of the trainer (seconds, not minutes);
    `env` adds environment variables (the fake trainer's and fake worker's knobs); `wait=False` returns
    before the worker is ready (start several, then `wait_ready()` each).
    """
    started: list[WorkerProcess] = []

    def start(*, fake_trainer: bool = False, env: dict[str, str] | None = None, wait: bool = True) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        command, cwd = [str(Path(sys.executable).with_name("alignd")), "worker"], None
        if fake_trainer:  # a module of this repository: run from its root
            command, cwd = [sys.executable, "-m", "tests.worker.fake_worker"], Path(__file__).parents[2]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        worker = WorkerProcess(process, log)
        started.append(worker)
        if wait:
            worker.wait_ready()
        return worker

    yield start
    for worker in started:
        worker.kill()
        print(f"--- {worker.log.name} (last lines) ---\n" + worker.log.read_text(errors="replace")[-4000:])
