"""Celery tasks: thin, like views. They take ids and hand off to plain functions."""

from __future__ import annotations

from celery import Celery, Task, shared_task
from celery.exceptions import Reject

from api.core.broker import sender
from api.core.settings import Settings, get_settings
from worker import runner


def settings_of(app: Celery) -> Settings:
    """The Settings an app was built with (worker.celery_app.create_app stores them on it)."""
    settings = app.conf.get("alignd_settings")
    return settings if isinstance(settings, Settings) else get_settings()


@shared_task(name="job.run", bind=True)
def run(self: Task, job_id: str) -> None:
    """Run job `job_id` if it is still queued (a second delivery finds it claimed and returns)."""
    if runner.HANDBACK.is_set():  # this worker is shutting down: the message goes back to the queue
        raise Reject(f"job {job_id}: the worker is shutting down", requeue=True)
    settings = settings_of(self.app)
    runner.run_job(job_id, settings, send=sender(self.app, settings.queue))
