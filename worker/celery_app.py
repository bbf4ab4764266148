"""The worker's Celery app, built from Settings (`celery -A worker.celery_app worker` finds `app`).

The broker only carries "job X is ready"; the job row owns the truth, so there is no result
backend (`task_ignore_result`). Settings chosen for tasks that run for hours:

- `worker_prefetch_multiplier = 1`: a worker reserves only the job it runs. A prefetched message
  would sit behind a multi-hour job while another GPU idles.
- `task_acks_late = True` with `task_reject_on_worker_lost = True`: a message is acknowledged only
  after the task returns, and goes back to the queue if the pool process dies. So a worker that dies
  between receiving a job and claiming its row does not lose the job. Redelivery is always harmless:
  the runner claims the row with one conditional UPDATE (queued -> running), so a second delivery of
  a job that is running or finished does nothing.
- Redis `visibility_timeout` (`REDIS_VISIBILITY_TIMEOUT`, 1 hour): Redis hands an unacknowledged message to
  another consumer once this passes, so for a job longer than that the message is redelivered while
  the job still runs. That is safe for the reason above (the redelivery finds the row claimed and
  returns at once). Recovering from dead workers is not the broker's job at all: the reaper
  (worker/reaper.py) returns jobs whose lease expired to `queued` and sends them again. We keep the
  timeout at an hour rather than "longer than any job" so a message lost in the window before the
  claim comes back in bounded time.
- The kombu SQLAlchemy transport of the embedded default (`sqla+sqlite:///...`) has no visibility
  timeout; unacknowledged messages return when the worker shuts down, and the reaper covers the rest.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from api.core.settings import Settings, get_settings

REDIS_VISIBILITY_TIMEOUT = 3600


def create_app(settings: Settings) -> Celery:
    """A Celery app for the worker side, on the broker and queue of `settings`."""
    app = Celery("alignd", broker=settings.resolved_broker_url, include=["worker.tasks"])
    transport_options: dict[str, Any] = {}
    if settings.resolved_broker_url.startswith(("redis://", "rediss://")):
        transport_options["visibility_timeout"] = REDIS_VISIBILITY_TIMEOUT
    app.conf.update(
        result_backend=None,
        task_ignore_result=True,
        task_default_queue=settings.queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options,
        # Tasks never time out from Celery's side: a job's duration is the trainer's business and
        # cancelling goes through the job row.
        task_time_limit=None,
        task_soft_time_limit=None,
    )
    # The task reads its Settings from the app, so `run_worker(settings)` needs no environment.
    app.conf.alignd_settings = settings
    return app


app = create_app(get_settings())
