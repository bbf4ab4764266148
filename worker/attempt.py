"""An attempt: one claimed run of a job by one worker, and the checks that it still owns the job.

A delivery of `job.run` becomes an attempt when `claim` moves the job from queued to running for
this worker (api/jobs/lifecycle.py; one conditional UPDATE, so a second delivery gets None). From
then on every transaction of the attempt (relay, heartbeat, runner) locks the row through
`lock_owned_job`, which raises `LostJob` when the reaper gave the job to someone else or it ended:
a stale attempt never writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from api.core.settings import Settings
from api.jobs import lifecycle
from api.jobs.events import lock_job
from api.jobs.models import Job


class LostJob(Exception):
    """The job row no longer belongs to this attempt (reaped and claimed again, or finished)."""


@dataclass(frozen=True)
class Attempt:
    """One claimed run of a job: who runs it and where its files live."""

    job_id: str
    tenant_id: str
    worker_id: str
    number: int
    workdir: Path


def claim(sessions: sessionmaker[Session], job_id: str, worker_id: str, settings: Settings) -> Attempt | None:
    """Take a queued job for `worker_id` (a new attempt); None when it was not queued."""
    with sessions() as session, session.begin():
        job = lifecycle.claim(session, job_id, worker_id, settings.lease_seconds)
        if job is None:
            return None
        workdir = settings.resolved_work_dir / "jobs" / job_id / f"attempt-{job.attempt}"
        return Attempt(job.id, job.tenant_id, worker_id, job.attempt, workdir)


def lock_owned_job(session: Session, attempt: Attempt) -> Job:
    """Lock the job row and make sure this attempt still owns it (raises LostJob otherwise)."""
    job = lock_job(session, attempt.job_id)
    owned = job.worker_id == attempt.worker_id and job.attempt == attempt.number
    if not owned or job.status not in lifecycle.HELD_STATUSES:
        raise LostJob(f"job {attempt.job_id} is {job.status}, attempt {job.attempt} of {job.worker_id}")
    return job
