"""The dispatcher: new jobs are sent to the broker after the response, in batches, each exactly once,
and whatever it could not send (or never got to) is left queued and unsent for the workers' reaper."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from api.core.db import utcnow
from api.jobs import dispatch, lifecycle
from api.jobs.models import Job
from tests.api.helpers import MODEL, dataset_row
from tests.conftest import TenantKey
from worker.reaper import resend_unsent


def queued_jobs(session: Session, tenant: TenantKey, n: int) -> list[str]:
    """`n` committed queued jobs, never sent (as a submission leaves them for the dispatcher)."""
    dataset = dataset_row(session, tenant.id)
    jobs = [
        Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=dataset.id, hyperparameters={})
        for _ in range(n)
    ]
    for job in jobs:
        lifecycle.submit(session, job)
    session.commit()
    return [job.id for job in jobs]


def unsent(session: Session, job_ids: list[str]) -> list[str]:
    session.expire_all()
    return list(session.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.enqueued_at.is_(None))))


def test_the_dispatcher_sends_every_job_exactly_once_in_batches_each_marked_sent_by_one_update(
    session: Session, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_ids = queued_jobs(session, tenant, 50)
    batches: list[list[str]] = []
    sending, release = threading.Event(), threading.Event()

    def send(ids: Sequence[str]) -> None:
        sending.set()
        release.wait(10)  # the first batch is being sent while the rest arrive
        batches.append(list(ids))

    updates: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append(statement)

    monkeypatch.setattr(dispatch, "send_jobs", send)
    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        dispatcher = dispatch.Dispatcher(lambda ids: dispatch._enqueue_batch(ids), max_batch=20, linger=0.0)
        dispatcher.put(job_ids[0])
        assert sending.wait(10)
        for job_id in job_ids[1:]:
            dispatcher.put(job_id)
        release.set()
        assert dispatcher.flush(10)
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert sorted(i for batch in batches for i in batch) == sorted(job_ids)  # each once
    assert [len(b) for b in batches] == [1, 20, 20, 9]  # what arrived meanwhile went together, MAX_BATCH at most
    assert len(updates) == len(batches)  # one UPDATE marks a whole batch sent
    assert unsent(session, job_ids) == []


def test_the_dispatcher_waits_a_moment_for_more_jobs_to_send_with_the_first(
    session: Session, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_ids = queued_jobs(session, tenant, 5)
    batches: list[list[str]] = []
    monkeypatch.setattr(dispatch, "send_jobs", lambda ids: batches.append(list(ids)))
    dispatcher = dispatch.Dispatcher(lambda ids: dispatch._enqueue_batch(ids), linger=5.0)
    for job_id in job_ids:
        dispatcher.put(job_id)
    assert dispatcher.flush(10)  # a flush does not wait out the linger
    assert batches == [job_ids]


def test_a_failed_send_leaves_the_batch_queued_and_unsent_and_the_reaper_sends_it(
    session: Session, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_ids = queued_jobs(session, tenant, 3)

    def broker_down(_: Sequence[str]) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(dispatch, "send_jobs", broker_down)
    dispatcher = dispatch.Dispatcher(lambda ids: dispatch._enqueue_batch(ids))
    for job_id in job_ids:
        dispatcher.put(job_id)
    assert dispatcher.flush(10)
    assert sorted(unsent(session, job_ids)) == sorted(job_ids)

    # Past the reaper's grace for jobs the API may still be sending, it sends each once.
    session.execute(update(Job).values(created_at=utcnow() - timedelta(minutes=1)))
    session.commit()
    resent: list[str] = []
    assert sorted(resend_unsent(session, resent.append)) == sorted(job_ids)
    assert sorted(resent) == sorted(job_ids) and unsent(session, job_ids) == []


def test_a_job_paused_before_its_dispatcher_sent_it_stays_unmarked_as_its_pause_left_it(
    session: Session, tenant: TenantKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    paused, queued = queued_jobs(session, tenant, 2)
    session.execute(update(Job).where(Job.id == paused).values(status="paused"))  # paused while in the dispatcher
    session.commit()
    monkeypatch.setattr(dispatch, "send_jobs", lambda ids: None)
    dispatcher = dispatch.Dispatcher(lambda ids: dispatch._enqueue_batch(ids))
    dispatcher.put(paused)
    dispatcher.put(queued)
    assert dispatcher.flush(10)
    # the stale send's mark skips the paused job: resuming it sends it again, and should that send fail,
    # the reaper resends it after its short grace instead of after ALIGND_RESEND_UNCLAIMED_SECONDS
    assert unsent(session, [paused, queued]) == [paused]


def test_a_job_its_api_process_never_sent_is_created_all_the_same_and_sent_by_the_reaper(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process dies between the commit and the send: the job is committed, the reaper sends it."""
    monkeypatch.setattr(dispatch, "send_after_commit", lambda job_id: None)
    resp = client.post("/v1/jobs", headers=auth, json={"algorithm": "dpo", "base_model": MODEL, "dataset_id": pairs})
    assert resp.status_code == 201 and resp.json()["status"] == "queued"
    job_id = resp.json()["id"]
    assert unsent(session, [job_id]) == [job_id]

    resent: list[str] = []
    assert resend_unsent(session, resent.append) == []  # still within the grace: the API may be sending it
    session.execute(update(Job).values(created_at=utcnow() - timedelta(minutes=1)))
    session.commit()
    assert resend_unsent(session, resent.append) == [job_id]
    assert resent == [job_id] and unsent(session, [job_id]) == []


def test_a_dispatcher_that_cannot_start_still_answers_the_submission_with_its_committed_job(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_thread() -> dispatch.Dispatcher:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(dispatch, "dispatcher", no_thread)
    resp = client.post("/v1/jobs", headers=auth, json={"algorithm": "dpo", "base_model": MODEL, "dataset_id": pairs})
    assert resp.status_code == 201  # never a 5xx after the commit
    assert unsent(session, [resp.json()["id"]]) == [resp.json()["id"]]


def test_a_batch_reaches_the_broker_as_one_message_per_job(session: Session, tenant: TenantKey) -> None:
    from api.core.broker import send_jobs
    from api.core.settings import get_settings

    job_ids = queued_jobs(session, tenant, 30)
    assert lifecycle.enqueue_all(session, job_ids, send_jobs) == job_ids
    assert dispatch.flush()
    settings = get_settings()
    queue = redis.Redis.from_url(settings.resolved_broker_url).lrange(settings.queue, 0, -1)
    sent = [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] for raw in queue]
    assert sorted(sent) == sorted(job_ids) and unsent(session, job_ids) == []
