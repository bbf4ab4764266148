"""The lease heartbeat: renews the lease of a job this attempt owns, notices cancels and lost ownership."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from api.core.db import utcnow
from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs import lifecycle
from api.jobs.events import lock_job
from tests.worker.conftest import add_dataset, add_job, job_row, request_cancel
from worker.heartbeat import Heartbeat
from worker.runner import claim


def test_a_heartbeat_renews_the_lease_and_notices_a_cancel_request_and_a_lost_job(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings, tmp_path: Path
) -> None:
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job_id = add_job(session, tenant.id, dataset.id, "tiny").id
    attempt = claim(db, job_id, "me:1", worker_settings)
    assert attempt is not None and claim(db, job_id, "other:2", worker_settings) is None
    heartbeat = Heartbeat(attempt, db, interval=60, lease_seconds=300)
    before = job_row(db, job_id).lease_expires_at
    assert before is not None

    heartbeat.beat()
    lease = job_row(db, job_id).lease_expires_at
    assert lease is not None and lease > before and (lease - utcnow()).total_seconds() > 290
    assert not heartbeat.cancel_requested.is_set() and not heartbeat.lost.is_set()

    request_cancel(db, job_id)
    heartbeat.beat()
    assert heartbeat.cancel_requested.is_set() and not heartbeat.lost.is_set()
    lease = job_row(db, job_id).lease_expires_at

    with db() as session, session.begin():  # the reaper gave the job to another worker
        job = lock_job(session, job_id)
        job.status, job.worker_id, job.attempt = "running", "other:2", job.attempt + 1
    heartbeat.beat()
    assert heartbeat.lost.is_set()
    assert job_row(db, job_id).lease_expires_at == lease  # the other worker's lease is left alone


def test_a_heartbeat_notices_a_pause_request_and_keeps_renewing_the_lease_while_the_job_is_pausing(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    with db() as session:
        dataset = add_dataset(session, storage, tenant.id)
        job_id = add_job(session, tenant.id, dataset.id, "tiny").id
    attempt = claim(db, job_id, "me:1", worker_settings)
    assert attempt is not None
    heartbeat = Heartbeat(attempt, db, interval=60, lease_seconds=300)
    heartbeat.beat()
    assert not heartbeat.pause_requested.is_set()
    before = job_row(db, job_id).lease_expires_at

    with db() as session, session.begin():  # what the API's pause does
        lifecycle.request_pause(session, lock_job(session, job_id))
    heartbeat.beat()
    assert heartbeat.pause_requested.is_set() and not heartbeat.cancel_requested.is_set()
    assert not heartbeat.lost.is_set() and job_row(db, job_id).lease_expires_at > before  # type: ignore[operator]
