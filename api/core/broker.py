"""The broker's one message, "job X is ready" (task `job.run`, DESIGN §2), and the API's connection.

`sender(app, queue)` is the only place that sends the task: the API sends through `get_celery()`
(`send_job`), a worker's reaper through its own app. Code sends only through the job life cycle's
`enqueue` (api/jobs/lifecycle.py), which commits the row first and records the send. The worker
defines the task "job.run"; the API names it and never imports worker code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

from celery import Celery

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


def sender(app: Celery, queue: str) -> Callable[[str], None]:
    """A function that tells the workers on `queue`, through `app`, that a job is ready to run."""

    def send(job_id: str) -> None:
        app.send_task(JOB_RUN_TASK, args=[job_id], queue=queue)

    return send


def send_job(job_id: str) -> None:
    """The API's sender: job `job_id` is ready, through the API's connection (get_celery)."""
    sender(get_celery(), get_settings().queue)(job_id)


def send_jobs(job_ids: Sequence[str]) -> None:
    """The API's sender for many jobs at once: their messages go to the broker in one batch (kombu's
    publish batch: one Redis pipeline, one round trip). Raises when the batch could not be sent; some
    of its messages may have reached the broker all the same (a duplicate delivery is harmless)."""
    app, queue = get_celery(), get_settings().queue
    with app.producer_or_acquire() as producer, producer.batch():
        for job_id in job_ids:
            app.send_task(JOB_RUN_TASK, args=[job_id], queue=queue, producer=producer)


def broker_reachable(timeout: float = 2.0) -> bool:
    """Whether a connection to the broker opens (for /readyz)."""
    try:
        with get_celery().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout)
        return True
    except Exception:
        return False
