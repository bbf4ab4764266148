"""On the embedded SQLite default, the API and a worker append events to one job from two processes.

SELECT ... FOR UPDATE is a no-op on SQLite; api/core/db.py begins a writer's SQLite transaction
IMMEDIATE instead. Without that, two processes that both read the job (as the API's request does when it
authenticates, before the life cycle locks the job) collide: the same seq twice, or "database is
locked" when a stale snapshot tries to write.
"""

from __future__ import annotations

import multiprocessing
import time

import pytest
from sqlalchemy import select

from api.core.settings import Settings
from api.core.storage import get_storage
from api.jobs.events import append_events, lock_job
from api.jobs.models import Job, JobEvent
from tests.conftest import TenantKey
from tests.worker.conftest import add_dataset, add_job

APPENDS = 60


def _append_many(url: str, job_id: str, writer: str, start: multiprocessing.synchronize.Event) -> None:
    """One process's appends, each in its own transaction that reads before it locks (like a request)."""
    from sqlalchemy.orm import sessionmaker

    import api.core.models  # noqa: F401  (every mapper)
    from api.core.db import WRITER, make_engine

    # Writers as the API's POST requests and the worker have them (api/deps.py, worker/db.py).
    sessions = sessionmaker(make_engine(url).execution_options(**{WRITER: True}), expire_on_commit=False)
    start.wait()
    for i in range(APPENDS):
        with sessions() as session:
            session.scalars(select(Job.status).where(Job.id == job_id)).one()  # the snapshot is taken here
            time.sleep(0.002)  # the other process commits meanwhile
            job = lock_job(session, job_id)
            append_events(session, job, [("log", {"writer": writer, "i": i})])
            session.commit()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_two_processes_appending_to_one_job_on_sqlite_never_collide_on_seq(
    settings: Settings, tenant: TenantKey, session
) -> None:
    dataset = add_dataset(session, get_storage(), tenant.id)
    job = add_job(session, tenant.id, dataset.id, "tiny")
    before = job.last_event_seq
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    writers = [
        context.Process(target=_append_many, args=(settings.resolved_database_url, job.id, name, start))
        for name in ("api", "worker")
    ]
    for process in writers:
        process.start()
    start.set()
    for process in writers:
        process.join(120)
    assert [p.exitcode for p in writers] == [0, 0], "a writer failed (see its traceback above)"

    session.expire_all()
    seqs = list(session.scalars(select(JobEvent.seq).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)))
    assert seqs == list(range(1, before + 2 * APPENDS + 1))
    assert session.get_one(Job, job.id).last_event_seq == before + 2 * APPENDS
    logs = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.type == "log")).all()
    for writer in ("api", "worker"):
        assert [d["i"] for d in logs if d["writer"] == writer] == list(range(APPENDS))
