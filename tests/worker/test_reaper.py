"""The reaper returns jobs of dead workers to the queue, fails them after max_attempts."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from api.core.db import utcnow
from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.events import lock_job
from api.jobs.lifecycle import transition
from tests.worker.conftest import add_dataset, add_job, events_of, job_row
from worker.reaper import reap_expired, resend_unsent


def _running_job(db: sessionmaker[Session], storage: Storage, tenant_id: str, *, expired: bool, **fields) -> str:  # type: ignore[no-untyped-def]
    status = fields.pop("status", "running")
    with db() as session:
        dataset = add_dataset(session, storage, tenant_id)
        job = add_job(session, tenant_id, dataset.id, "tiny", **fields)
        job = lock_job(session, job.id)
        transition(session, job, "running")
        if status != "running":
            transition(session, job, status)
        job.worker_id = "dead-host:123"
        job.attempt = fields.get("attempt", 1)
        job.lease_expires_at = utcnow() + timedelta(seconds=-1 if expired else 60)
        session.commit()
        return job.id


def _reap(db: sessionmaker[Session]) -> tuple[list[str], list[str]]:
    sent: list[str] = []
    with db() as session:
        requeued = reap_expired(session, sent.append)
    return requeued, sent


def test_a_job_whose_lease_expired_goes_back_to_the_queue_and_is_sent_again(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    job_id = _running_job(db, storage, tenant.id, expired=True)
    alive = _running_job(db, storage, tenant.id, expired=False)

    requeued, sent = _reap(db)

    assert requeued == sent == [job_id]
    job = job_row(db, job_id)
    assert job.status == "queued" and job.worker_id is None and job.lease_expires_at is None and job.attempt == 1
    last = events_of(db, job_id)[-1]
    assert last.type == "status" and last.data["status"] == "queued" and last.data["reason"] == "lease expired"
    assert job_row(db, alive).status == "running"
    assert _reap(db) == ([], [])  # a second reaper finds nothing more to do


def test_a_job_whose_worker_died_max_attempts_times_fails_saying_so(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    job_id = _running_job(db, storage, tenant.id, expired=True, attempt=3, max_attempts=3, progress={"step": 40})

    assert _reap(db) == ([], [])

    job = job_row(db, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost" and job.finished_at is not None
    assert job.error_message.startswith("The worker running this job died 3 times (last seen at step 40);")


def test_a_cancelling_job_whose_worker_died_becomes_cancelled(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    job_id = _running_job(db, storage, tenant.id, expired=True, status="cancelling")

    assert _reap(db) == ([], [])

    assert job_row(db, job_id).status == "cancelled"
    statuses = [e.data["status"] for e in events_of(db, job_id) if e.type == "status"]
    assert statuses == ["queued", "running", "cancelling", "cancelled"]


def _queued_job(db: sessionmaker[Session], storage: Storage, tenant_id: str, **fields) -> str:  # type: ignore[no-untyped-def]
    with db() as session:
        dataset = add_dataset(session, storage, tenant_id)
        return add_job(session, tenant_id, dataset.id, "tiny", created_at=utcnow() - timedelta(minutes=1), **fields).id


def test_a_queued_job_whose_send_failed_is_sent_by_the_reaper_once(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    unsent = _queued_job(db, storage, tenant.id)
    already_sent = _queued_job(db, storage, tenant.id, enqueued_at=utcnow())
    sent: list[str] = []

    with db() as session:
        assert resend_unsent(session, sent.append) == [unsent]
    assert sent == [unsent]
    assert job_row(db, unsent).enqueued_at is not None and job_row(db, unsent).status == "queued"
    with db() as session:
        assert resend_unsent(session, sent.append) == []
    assert sent == [unsent] and already_sent not in sent


def test_a_send_that_fails_again_leaves_the_job_for_the_next_pass(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    job_id = _queued_job(db, storage, tenant.id)

    def broker_down(_: str) -> None:
        raise ConnectionError("broker down")

    with db() as session:
        assert resend_unsent(session, broker_down) == []
    assert job_row(db, job_id).enqueued_at is None


def test_a_requeued_job_is_marked_sent_only_after_its_send(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    job_id = _running_job(db, storage, tenant.id, expired=True, enqueued_at=utcnow() - timedelta(hours=1))
    before = job_row(db, job_id).enqueued_at

    _reap(db)

    after = job_row(db, job_id).enqueued_at
    assert before is not None and after is not None and after > before


def test_a_queued_job_sent_long_ago_and_never_claimed_is_sent_again_once_per_period(
    db: sessionmaker[Session], storage: Storage, tenant, worker_settings: Settings
) -> None:
    # The broker accepted the message and lost it (Redis restarted without persistence): the row is
    # queued with enqueued_at set, which the unsent check alone never looks at again.
    lost = _queued_job(db, storage, tenant.id, enqueued_at=utcnow() - timedelta(minutes=11))
    recent = _queued_job(db, storage, tenant.id, enqueued_at=utcnow() - timedelta(minutes=1))
    sent: list[str] = []

    with db() as session:
        assert resend_unsent(session, sent.append) == []  # without the period: only never-sent jobs
        assert resend_unsent(session, sent.append, unclaimed_after=600) == [lost]
        assert resend_unsent(session, sent.append, unclaimed_after=600) == []  # marked sent again: not before 600 s

    assert sent == [lost] and recent not in sent
