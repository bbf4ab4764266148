"""The reaper: jobs whose worker died go back to the queue, or fail after max_attempts.

A running job's lease is renewed by its worker's heartbeat. When the lease has expired the worker is
presumed dead (killed, out of memory, machine gone), and the job life cycle decides where it goes
(api/jobs/lifecycle.py `expire_lease`):
- a `cancelling` job becomes `cancelled` (nobody is left to stop, and the user asked to stop);
- a job that has used all its attempts becomes `failed`, saying so in words;
- anything else goes back to `queued` (worker id and lease cleared; the next claim adds one to the
  attempt and resumes from the last checkpoint) and is sent to the broker again after the commit.

It also repairs pipelines (`repair_pipelines`): a stage whose inputs have succeeded but which has no
job yet gets one, and a stopped pipeline's live stages are cancelled; normally the job life cycle
does both in the transaction that ends a stage, so this only finds work after a crash or a bug.

It also sends again every queued job whose id never reached the broker (`enqueued_at` is NULL:
the API's send failed, e.g. the broker was down at submit time), and every queued job that was
sent more than `resend_unclaimed_seconds` ago and is still not claimed: the broker accepted the
message and then lost it (Redis restarted without persistence, a failover, a flushed queue). The
database cannot tell a lost message from one still waiting behind other jobs, so a job waiting
that long gets one more message per period; the extra deliveries find it claimed or still queued
and the claim takes it once. Both go through the life cycle's
`enqueue` (commit, send, mark sent); a duplicate delivery is harmless because claiming is one
conditional UPDATE.

Every worker runs the reaper in a small thread (`ReaperThread`, started by run_worker) rather than
under celery beat: there is no extra process to deploy and no single point whose death stops the
reaping. Concurrent reapers are safe: each job is re-checked under its row lock (SKIP LOCKED on
Postgres, so two reapers never wait on each other) and an already-requeued job no longer matches.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db import utcnow
from api.core.settings import Settings
from api.jobs import lifecycle
from api.jobs.models import Job
from api.pipelines import advance
from worker.db import session_factory

logger = logging.getLogger(__name__)

# A job committed this recently may still be in the API's hands (committed, not yet sent).
UNSENT_GRACE_SECONDS = 10


def reap_expired(session: Session, send: lifecycle.Send) -> list[str]:
    """Recover every held job with an expired lease; commits, then sends the requeued ones.

    Returns the ids of the jobs sent back to the queue.
    """
    expired = session.scalars(
        select(Job)
        .where(Job.status.in_(lifecycle.HELD_STATUSES), Job.lease_expires_at < utcnow())
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).all()
    requeued = [job.id for job in expired if lifecycle.expire_lease(session, job) == "queued"]
    lifecycle.enqueue(session, requeued, send)
    return requeued


def resend_unsent(session: Session, send: lifecycle.Send, unclaimed_after: float | None = None) -> list[str]:
    """Send every queued job whose id never reached the broker, and (with `unclaimed_after`) every
    queued job sent that many seconds ago and still not claimed; returns the ids sent."""
    now = utcnow()
    settled = now - timedelta(seconds=UNSENT_GRACE_SECONDS)
    lost = Job.enqueued_at.is_(None) & (Job.created_at < settled)
    if unclaimed_after is not None:
        lost = lost | (Job.enqueued_at < now - timedelta(seconds=unclaimed_after))
    unsent = session.scalars(select(Job.id).where(Job.status == "queued", lost)).all()
    return lifecycle.enqueue(session, list(unsent), send)


def repair_pipelines(session: Session, settings: Settings, send: lifecycle.Send) -> list[str]:
    """Advance every unsettled pipeline (api/pipelines/advance.py `repair`): a stage whose inputs
    succeeded but whose job is missing gets it, a stopped pipeline's live stages are cancelled.
    Commits, then sends the new jobs; returns their ids."""
    return lifecycle.enqueue(session, advance.repair(session, settings), send)


class ReaperThread(threading.Thread):
    """Runs reap_expired and resend_unsent every `reap_interval_seconds` until stopped."""

    def __init__(self, settings: Settings, send: lifecycle.Send, unclaimed_after: float | None = None) -> None:
        super().__init__(name="alignd-reaper", daemon=True)
        self.settings = settings
        self.send = send
        self.unclaimed_after = unclaimed_after
        self._stop_event = threading.Event()

    def run(self) -> None:
        sessions = session_factory(self.settings)
        while True:  # a pass at start-up too: a restarted worker picks up what its predecessor left
            try:
                with sessions() as session:
                    reap_expired(session, self.send)
                    resend_unsent(session, self.send, self.unclaimed_after)
                    repair_pipelines(session, self.settings, self.send)
            except Exception:
                logger.exception("reaper pass failed; trying again in %ss", self.settings.reap_interval_seconds)
            if self._stop_event.wait(self.settings.reap_interval_seconds):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
