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

Every `orphan_sweep_seconds` it also deletes checkpoint archives that no checkpoint row names and that
are older than `orphan_grace_seconds` (api/checkpoints/service.py `sweep_orphan_archives`): a worker
killed between uploading an archive and writing its row leaves one behind, and nothing else would
ever remove it. Concurrent sweeps are harmless (deleting a deleted key is not an error).

Every worker runs the reaper in a small thread (`ReaperThread`, started by run_worker) rather than
under celery beat: there is no extra process to deploy and no single point whose death stops the
reaping. Concurrent reapers are safe: each job is re-checked under its row lock (SKIP LOCKED on
Postgres, so two reapers never wait on each other) and an already-requeued job no longer matches.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checkpoints.service import sweep_orphan_archives
from api.core.db import utcnow
from api.core.settings import Settings
from api.core.storage import storage_from_url
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


def sweep_orphans(session: Session, settings: Settings) -> list[str]:
    """Delete the checkpoint archives without a row older than `orphan_grace_seconds`; returns their keys."""
    storage = storage_from_url(settings.resolved_storage_url, settings)
    cutoff = utcnow() - timedelta(seconds=settings.orphan_grace_seconds)
    deleted = sweep_orphan_archives(session, storage, cutoff)
    if deleted:
        logger.info("deleted %d checkpoint archives that no checkpoint names: %s", len(deleted), deleted)
    return deleted


class ReaperThread(threading.Thread):
    """Runs reap_expired and resend_unsent every `reap_interval_seconds`, and sweep_orphans every
    `orphan_sweep_seconds` (the first at start-up), until stopped."""

    def __init__(self, settings: Settings, send: lifecycle.Send, unclaimed_after: float | None = None) -> None:
        super().__init__(name="alignd-reaper", daemon=True)
        self.settings = settings
        self.send = send
        self.unclaimed_after = unclaimed_after
        self._stop_event = threading.Event()

    def run(self) -> None:
        sessions = session_factory(self.settings)
        next_sweep = time.monotonic()
        while True:  # a pass at start-up too: a restarted worker picks up what its predecessor left
            try:
                with sessions() as session:
                    reap_expired(session, self.send)
                    resend_unsent(session, self.send, self.unclaimed_after)
                    repair_pipelines(session, self.settings, self.send)
            except Exception:
                logger.exception("reaper pass failed; trying again in %ss", self.settings.reap_interval_seconds)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + self.settings.orphan_sweep_seconds
                try:
                    with sessions() as session:
                        sweep_orphans(session, self.settings)
                except Exception:
                    logger.exception(
                        "orphan archive sweep failed; trying again in %ss", self.settings.orphan_sweep_seconds
                    )
            if self._stop_event.wait(self.settings.reap_interval_seconds):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
