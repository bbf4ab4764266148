"""The API's side of the broker: it only ever sends "job X is ready" (DESIGN §2).

The job row is committed before its id is sent, so a worker that receives the id always finds the
row. The worker defines the task "job.run"; the API names it and never imports worker code.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery
from sqlalchemy import update
from sqlalchemy.orm import Session

from api.core.db import utcnow
from api.core.settings import get_settings

JOB_RUN_TASK = "job.run"


@lru_cache
def get_celery() -> Celery:
    settings = get_settings()
    app = Celery("alignd-api", broker=settings.resolved_broker_url)
    # Never wait long on a broker that is down: the job row is already committed and a worker's
    # reaper/requeue path (or a later resend) picks it up; the request must not hang.
    app.conf.broker_connection_retry_on_startup = False
    app.conf.broker_connection_max_retries = 1
    app.conf.broker_transport_options = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5}
    return app


def enqueue_job(job_id: str) -> None:
    """Tell the workers that job `job_id` (already committed) is ready to run."""
    get_celery().send_task(JOB_RUN_TASK, args=[job_id], queue=get_settings().queue)


def mark_enqueued(session: Session, job_id: str) -> None:
    """Record that a job id reached the broker (a queued job without it is sent again by the reaper)."""
    from api.jobs.models import Job

    session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=utcnow()))
    session.commit()


def broker_reachable(timeout: float = 2.0) -> bool:
    """Whether a connection to the broker opens (for /readyz)."""
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False
