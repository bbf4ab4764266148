"""The reaper: jobs whose worker died go back to the queue, or fail after max_attempts.

A running job's lease is renewed by its worker's heartbeat. When the lease has expired the worker is
presumed dead (killed, out of memory, machine gone). Then:
- a `cancelling` job becomes `cancelled` (nobody is left to stop, and the user asked to stop);
- a job that has used all its attempts becomes `failed`, saying so in words;
- anything else goes back to `queued` (worker id and lease cleared; the next claim adds one to the
  attempt and resumes from the last checkpoint) and is sent to the broker again after the commit.

It also sends again every queued job whose id never reached the broker (`enqueued_at` is NULL:
the API's send failed, e.g. the broker was down at submit time). A job is only marked sent after a
send that succeeded; a duplicate delivery is harmless because claiming is one conditional UPDATE.

Every worker runs the reaper in a small thread (`ReaperThread`, started by run_worker) rather than
under celery beat: there is no extra process to deploy and no single point whose death stops the
reaping. Concurrent reapers are safe: each job is re-checked under its row lock (SKIP LOCKED on
Postgres, so two reapers never wait on each other) and an already-requeued job no longer matches.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.broker import mark_enqueued
from api.core.db import utcnow
from api.core.settings import Settings
from api.jobs.events import set_status
from api.jobs.models import Job
from worker.db import session_factory

logger = logging.getLogger(__name__)

Enqueue = Callable[[str], None]

# A job committed this recently may still be in the API's hands (committed, not yet sent).
UNSENT_GRACE_SECONDS = 10


def reap_expired(session: Session, settings: Settings, enqueue: Enqueue | None = None) -> list[str]:
    """Recover every live job with an expired lease; commits, then enqueues the requeued ones.

    Returns the ids of the jobs sent back to the queue.
    """
    now = utcnow()
    expired = session.scalars(
        select(Job)
        .where(Job.status.in_(("running", "cancelling")), Job.lease_expires_at < now)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    requeued = [job.id for job in expired if _recover(session, job) == "queued"]
    session.commit()
    if requeued:
        _send(session, settings, requeued, enqueue)
    return requeued


def resend_unsent(session: Session, settings: Settings, enqueue: Enqueue | None = None) -> list[str]:
    """Send every queued job whose id never reached the broker; returns the ids sent."""
    settled = utcnow() - timedelta(seconds=UNSENT_GRACE_SECONDS)
    unsent = session.scalars(
        select(Job.id).where(Job.status == "queued", Job.enqueued_at.is_(None), Job.created_at < settled)
    ).all()
    return _send(session, settings, list(unsent), enqueue) if unsent else []


def _send(session: Session, settings: Settings, job_ids: list[str], enqueue: Enqueue | None) -> list[str]:
    send = enqueue or _celery_enqueue(settings)
    sent = []
    for job_id in job_ids:
        try:
            send(job_id)
        except Exception:
            logger.exception("could not send job %s to the broker; the next reaper pass tries again", job_id)
            continue
        mark_enqueued(session, job_id)
        sent.append(job_id)
    return sent


def _recover(session: Session, job: Job) -> str:
    job.lease_expires_at = None
    job.enqueued_at = None
    dead_worker, job.worker_id = job.worker_id, None
    step = (job.progress or {}).get("step")
    if job.status == "cancelling":
        job.finished_at = utcnow()
        set_status(session, job, "cancelled", reason="the worker running the job stopped responding")
    elif job.attempt >= job.max_attempts:
        job.finished_at = utcnow()
        job.error_code = "worker_lost"
        job.error_message = (
            f"The worker running this job died {job.attempt} times"
            + (f" (last seen at step {step})" if step is not None else "")
            + "; check the worker logs for out-of-memory kills or crashes, then resubmit"
            " (a smaller batch_size or max_length, or LoRA, lowers memory use)."
        )
        set_status(session, job, "failed", error={"code": job.error_code, "message": job.error_message})
    else:
        set_status(session, job, "queued", reason="lease expired", attempt=job.attempt, worker_id=dead_worker)
    logger.warning("job %s: lease of %s expired; now %s", job.id, dead_worker, job.status)
    return job.status


def _celery_enqueue(settings: Settings) -> Enqueue:
    from worker.celery_app import create_app

    app = create_app(settings)

    def send(job_id: str) -> None:
        app.send_task("job.run", args=[job_id], queue=settings.queue)

    return send


class ReaperThread(threading.Thread):
    """Runs reap_expired every `reap_interval_seconds` until stopped."""

    def __init__(self, settings: Settings, enqueue: Enqueue | None = None) -> None:
        super().__init__(name="alignd-reaper", daemon=True)
        self.settings = settings
        self.enqueue = enqueue
        self._stop_event = threading.Event()

    def run(self) -> None:
        sessions = session_factory(self.settings)
        while True:  # a pass at start-up too: a restarted worker picks up what its predecessor left
            try:
                with sessions() as session:
                    reap_expired(session, self.settings, self.enqueue)
                    resend_unsent(session, self.settings, self.enqueue)
            except Exception:
                logger.exception("reaper pass failed; trying again in %ss", self.settings.reap_interval_seconds)
            if self._stop_event.wait(self.settings.reap_interval_seconds):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
