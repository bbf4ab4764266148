"""Celery tasks: thin, like views. They take ids and hand off to plain functions."""

from __future__ import annotations

from celery import Celery, Task, shared_task

from api.core.settings import Settings, get_settings
from worker.runner import run_job


def settings_of(app: Celery) -> Settings:
    """The Settings an app was built with (worker.celery_app.create_app stores them on it)."""
    settings = app.conf.get("alignd_settings")
    return settings if isinstance(settings, Settings) else get_settings()


@shared_task(name="job.run", bind=True)
def run(self: Task, job_id: str) -> None:
    """Run job `job_id` if it is still queued (a second delivery finds it claimed and returns)."""
    run_job(job_id, settings_of(self.app))
