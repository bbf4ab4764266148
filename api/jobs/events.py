"""Appending job events: the one place sequence numbers are handed out.

Both the API and the worker append through `append_events`: status events through the job life
cycle (api/jobs/lifecycle.py, the only place that changes a job's status), relayed trainer events
through worker/relay.py. It locks the job row (SELECT ... FOR UPDATE on Postgres; on SQLite, where
that is a no-op, a writer's transaction begins IMMEDIATE and so holds the database's write lock from its
start, see api/core/db.py), so seqs are gap-free and strictly increasing per job even with several writers in
several processes. The caller commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.jobs.models import Job, JobEvent

EVENT_TYPES = ("status", "metrics", "checkpoint", "log", "sample")


def lock_job(session: Session, job_id: str) -> Job:
    """Re-read a job row with a write lock held until the transaction ends."""
    job = session.execute(
        select(Job).where(Job.id == job_id).with_for_update().execution_options(populate_existing=True)
    ).scalar_one()
    return job


def append_events(session: Session, job: Job, events: Iterable[tuple[str, dict[str, Any]]]) -> list[JobEvent]:
    """Add events (type, data) to a job whose row the caller has locked (see lock_job)."""
    rows = []
    for type_, data in events:
        if type_ not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_!r}")
        job.last_event_seq += 1
        row = JobEvent(job_id=job.id, seq=job.last_event_seq, type=type_, data=data)
        session.add(row)
        rows.append(row)
    return rows
