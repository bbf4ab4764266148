"""The job life cycle (api/jobs/lifecycle.py): the table decides every status change, each change is
one status event, finished_at marks exactly the final statuses, and ids reach the broker only after
the job row is committed."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from api.core.settings import Settings
from api.jobs import dispatch, lifecycle
from api.jobs.events import lock_job
from api.jobs.lifecycle import TRANSITIONS, ForbiddenTransition, transition
from api.jobs.models import FINAL_STATUSES, Job, JobEvent
from tests.api.helpers import dataset_row
from tests.conftest import TenantKey

STATUSES = sorted(TRANSITIONS)
ALLOWED = [(current, new) for current in STATUSES for new in sorted(TRANSITIONS[current])]


def path_to(status: str) -> list[str]:
    """The shortest list of statuses that takes a new (queued) job to `status` through the table."""
    paths = {"queued": ["queued"]}
    todo = deque(["queued"])
    while todo:
        current = todo.popleft()
        for new in sorted(TRANSITIONS[current]):
            if new not in paths:
                paths[new] = [*paths[current], new]
                todo.append(new)
    return paths[status][1:]


@pytest.fixture
def new_job(session: Session, tenant: TenantKey) -> Iterator[Job]:
    """A queued job with its first event, committed (its dataset row only satisfies the foreign key)."""
    dataset = dataset_row(session, tenant.id)
    job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=dataset.id, hyperparameters={})
    lifecycle.submit(session, job)
    session.commit()
    yield job


def job_in(session: Session, job: Job, status: str) -> Job:
    """Lock `job` and move it to `status` along the table (the test's own transaction stays open)."""
    locked = lock_job(session, job.id)
    for step in path_to(status):
        transition(session, locked, step)
    return locked


def events(session: Session, job_id: str) -> list[JobEvent]:
    session.flush()
    return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def second_session(settings: Settings) -> Session:
    """A session on its own connection: it sees only what was committed."""
    return sessionmaker(create_engine(settings.resolved_database_url, poolclass=NullPool))()


def test_the_final_statuses_are_the_ones_with_no_way_out() -> None:
    assert {status for status, nexts in TRANSITIONS.items() if not nexts} == set(FINAL_STATUSES)
    assert all(path_to(status) or status == "queued" for status in STATUSES)  # every status is reachable


@pytest.mark.parametrize(("current", "new"), ALLOWED, ids=[f"{c}->{n}" for c, n in ALLOWED])
def test_every_allowed_transition_works_and_writes_one_status_event(
    session: Session, new_job: Job, current: str, new: str
) -> None:
    job = job_in(session, new_job, current)
    before = events(session, job.id)

    event = transition(session, job, new, reason="test")
    session.commit()

    after = events(session, job.id)
    assert [e.seq for e in after] == list(range(1, len(before) + 2))
    assert after[-1].id == event.id and after[-1].type == "status"
    assert after[-1].data == {"status": new, "previous": current, "reason": "test"}
    assert session.get_one(Job, job.id).status == new


@pytest.mark.parametrize("current", STATUSES)
def test_a_transition_the_table_lacks_raises_and_changes_nothing(session: Session, new_job: Job, current: str) -> None:
    job = job_in(session, new_job, current)
    session.commit()
    seq = job.last_event_seq
    for new in sorted(set(STATUSES) - TRANSITIONS[current]):
        with pytest.raises(ForbiddenTransition, match=f"{current} -> {new}"):
            transition(session, lock_job(session, job.id), new)
        session.rollback()
        assert lock_job(session, job.id).status == current and job.last_event_seq == seq
        session.rollback()


@pytest.mark.parametrize(("current", "new"), [("succeeded", "running"), ("cancelled", "queued"), ("failed", "queued")])
def test_a_finished_job_never_runs_again(session: Session, new_job: Job, current: str, new: str) -> None:
    job = job_in(session, new_job, current)
    with pytest.raises(ForbiddenTransition):
        transition(session, job, new)


@pytest.mark.parametrize("final", FINAL_STATUSES)
def test_finished_at_is_set_exactly_when_a_job_reaches_a_final_status(
    session: Session, new_job: Job, final: str
) -> None:
    job = lock_job(session, new_job.id)
    assert job.finished_at is None
    for step in path_to(final):
        transition(session, job, step)
        assert (job.finished_at is not None) == (step in FINAL_STATUSES), step
        if step in FINAL_STATUSES:
            assert job.lease_expires_at is None


def test_started_at_is_the_first_start_and_a_requeue_releases_the_worker(session: Session, new_job: Job) -> None:
    job = lifecycle.claim(session, new_job.id, "w1", lease_seconds=60)
    assert job is not None and job.started_at is not None and job.lease_expires_at is not None
    first_start = job.started_at
    session.commit()

    assert lifecycle.expire_lease(session, lock_job(session, job.id)) == "queued"
    session.commit()
    assert job.worker_id is None and job.lease_expires_at is None and job.enqueued_at is None
    assert job.attempt == 1 and job.finished_at is None

    again = lifecycle.claim(session, job.id, "w2", lease_seconds=60)
    session.commit()
    assert again is not None and again.attempt == 2 and again.started_at == first_start
    data = [e.data for e in events(session, job.id)]
    assert data[-2] == {
        "status": "queued",
        "previous": "running",
        "reason": "lease expired",
        "attempt": 1,
        "worker_id": "w1",
    }
    assert data[-1] == {"status": "running", "previous": "queued", "attempt": 2, "worker_id": "w2"}


def test_a_second_claim_of_one_job_gets_nothing(session: Session, new_job: Job) -> None:
    assert lifecycle.claim(session, new_job.id, "w1", lease_seconds=60) is not None
    session.commit()
    assert lifecycle.claim(session, new_job.id, "w2", lease_seconds=60) is None
    session.rollback()
    assert [e.data["status"] for e in events(session, new_job.id)] == ["queued", "running"]


def test_a_job_whose_worker_died_too_often_fails_in_words(session: Session, new_job: Job) -> None:
    job = lock_job(session, new_job.id)
    job.max_attempts = 1
    assert lifecycle.claim(session, job.id, "w1", lease_seconds=60) is not None
    assert lifecycle.expire_lease(session, lock_job(session, job.id)) == "failed"
    session.commit()
    assert job.error_code == "worker_lost" and job.error_message.startswith("The worker running this job died 1 times")
    assert events(session, job.id)[-1].data["error"] == {"code": "worker_lost", "message": job.error_message}


def test_a_job_handed_back_on_shutdown_is_queued_at_once_with_its_attempt_counted(
    session: Session, new_job: Job
) -> None:
    assert lifecycle.claim(session, new_job.id, "w1", lease_seconds=60) is not None
    assert lifecycle.hand_back(session, lock_job(session, new_job.id), "the worker is shutting down") == "queued"
    session.commit()
    job = lock_job(session, new_job.id)
    assert job.worker_id is None and job.lease_expires_at is None and job.enqueued_at is None and job.attempt == 1
    assert events(session, job.id)[-1].data == {
        "status": "queued", "previous": "running", "reason": "the worker is shutting down",
        "attempt": 1, "worker_id": "w1", "saved": False,
    }  # fmt: skip
    assert lifecycle.claim(session, job.id, "w2", lease_seconds=60).attempt == 2  # type: ignore[union-attr]


def test_a_job_handed_back_on_its_last_attempt_fails_saying_why(session: Session, new_job: Job) -> None:
    job = lock_job(session, new_job.id)
    job.max_attempts = 1
    assert lifecycle.claim(session, job.id, "w1", lease_seconds=60) is not None
    assert lifecycle.hand_back(session, lock_job(session, job.id), "the worker is shutting down") == "failed"
    assert job.error_code == "worker_shutdown" and "the worker is shutting down" in (job.error_message or "")


def test_a_job_handed_back_after_its_trainer_saved_gets_its_attempt_back_even_on_its_last(
    session: Session, new_job: Job
) -> None:
    job = lock_job(session, new_job.id)
    job.max_attempts = 1
    assert lifecycle.claim(session, job.id, "w1", lease_seconds=60) is not None
    assert (
        lifecycle.hand_back(session, lock_job(session, job.id), "the worker is shutting down", saved=True) == "queued"
    )
    assert (job.attempt, job.max_attempts) == (1, 2) and events(session, job.id)[-1].data["saved"] is True


def test_a_cancelling_job_handed_back_is_cancelled(session: Session, new_job: Job) -> None:
    assert lifecycle.claim(session, new_job.id, "w1", lease_seconds=60) is not None
    job = lock_job(session, new_job.id)
    transition(session, job, "cancelling")
    assert lifecycle.hand_back(session, job, "the worker is shutting down") == "cancelled"


def test_a_failure_records_its_error_on_the_job_and_in_its_one_event(session: Session, new_job: Job) -> None:
    job = job_in(session, new_job, "running")
    lifecycle.fail(session, job, "oom", "CUDA out of memory at step 40: lower batch_size or use LoRA")
    session.commit()
    assert (job.status, job.error_code) == ("failed", "oom") and job.finished_at is not None
    assert events(session, job.id)[-1].data == {
        "status": "failed",
        "previous": "running",
        "error": {"code": "oom", "message": "CUDA out of memory at step 40: lower batch_size or use LoRA"},
    }


@pytest.mark.parametrize(("current", "result"), [("queued", "cancelled"), ("running", "cancelling")])
def test_a_cancel_stops_a_queued_job_at_once_and_asks_a_running_one_and_is_idempotent(
    session: Session, new_job: Job, current: str, result: str
) -> None:
    job = job_in(session, new_job, current)
    assert lifecycle.request_cancel(session, job, reason="cancelled by the user") is True
    assert job.status == result
    seq = job.last_event_seq
    assert lifecycle.request_cancel(session, job, reason="again") is False
    assert job.last_event_seq == seq


@pytest.mark.parametrize("final", ["succeeded", "failed"])
def test_a_finished_job_cannot_be_cancelled(session: Session, new_job: Job, final: str) -> None:
    job = job_in(session, new_job, final)
    with pytest.raises(ForbiddenTransition):
        lifecycle.request_cancel(session, job, reason="too late")


# ---- pause and resume ----------------------------------------------------------------------------


@pytest.mark.parametrize(("current", "result"), [("queued", "paused"), ("running", "pausing")])
def test_a_pause_stops_a_queued_job_at_once_and_asks_a_running_one_and_is_idempotent(
    session: Session, new_job: Job, current: str, result: str
) -> None:
    job = job_in(session, new_job, current)
    assert lifecycle.request_pause(session, job) is True
    assert job.status == result
    seq = job.last_event_seq
    assert lifecycle.request_pause(session, job) is False
    assert job.last_event_seq == seq
    assert events(session, job.id)[-1].data == {"status": result, "previous": current, "reason": "paused by the user"}


@pytest.mark.parametrize("current", ["cancelling", "succeeded", "failed", "cancelled"])
def test_a_cancelling_or_finished_job_cannot_be_paused(session: Session, new_job: Job, current: str) -> None:
    job = job_in(session, new_job, current)
    with pytest.raises(ForbiddenTransition):
        lifecycle.request_pause(session, job)


def test_a_paused_attempt_is_given_back_so_pauses_never_use_up_max_attempts(session: Session, new_job: Job) -> None:
    job = lock_job(session, new_job.id)
    job.max_attempts = 1
    for n in (1, 2, 3):  # three pauses of a job allowed one attempt
        assert lifecycle.claim(session, job.id, "w1", lease_seconds=60) is not None
        assert lifecycle.request_pause(session, job) is True
        lifecycle.paused(session, job, step=10 * n)
        assert (job.status, job.worker_id, job.lease_expires_at) == ("paused", None, None)
        assert lifecycle.resume(session, job) is True
    assert (job.attempt, job.max_attempts) == (3, 4)
    assert lifecycle.claim(session, job.id, "w1", lease_seconds=60) is not None
    # the worker dies on the one real attempt the job has: it fails as before
    assert lifecycle.expire_lease(session, lock_job(session, job.id)) == "failed"
    paused_events = [e.data for e in events(session, job.id) if e.data.get("status") == "paused"]
    assert paused_events[0] == {
        "status": "paused",
        "previous": "pausing",
        "reason": "paused at a step boundary",
        "step": 10,
    }


def test_a_resume_queues_a_paused_job_and_is_idempotent_but_waits_for_a_pausing_one(
    session: Session, new_job: Job
) -> None:
    job = job_in(session, new_job, "running")
    lifecycle.request_pause(session, job)
    with pytest.raises(ForbiddenTransition):
        lifecycle.resume(session, job)  # pausing: the trainer is saving; resume once it is paused
    lifecycle.paused(session, job, step=3)
    assert lifecycle.resume(session, job) is True
    assert (job.status, job.enqueued_at) == ("queued", None)
    assert events(session, job.id)[-1].data == {
        "status": "queued",
        "previous": "paused",
        "reason": "resumed by the user",
    }
    assert lifecycle.resume(session, job) is False


@pytest.mark.parametrize(("current", "result"), [("paused", "cancelled"), ("pausing", "cancelling")])
def test_a_cancel_ends_a_paused_job_at_once_and_asks_a_pausing_one(
    session: Session, new_job: Job, current: str, result: str
) -> None:
    job = job_in(session, new_job, current)
    assert lifecycle.request_cancel(session, job, reason="cancelled by the user") is True
    assert job.status == result


def test_a_pausing_job_whose_worker_died_or_shut_down_is_paused_not_requeued(session: Session, new_job: Job) -> None:
    for end in (lifecycle.expire_lease, lambda s, j: lifecycle.hand_back(s, j, "the worker is shutting down")):
        assert lifecycle.claim(session, new_job.id, "w1", lease_seconds=60) is not None
        job = lock_job(session, new_job.id)
        lifecycle.request_pause(session, job)
        assert end(session, job) == "paused"
        assert job.worker_id is None and job.lease_expires_at is None
        lifecycle.resume(session, job)


# ---- enqueue after commit -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_job_id_is_sent_only_once_its_row_is_visible_to_another_session(
    session: Session, tenant: TenantKey, settings: Settings, backend: str
) -> None:
    dataset = dataset_row(session, tenant.id)
    job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=dataset.id, hyperparameters={})
    lifecycle.submit(session, job)  # added, not committed
    seen: list[tuple[str, str | None, bool]] = []

    def send(job_id: str) -> None:
        with second_session(settings) as other:
            row = other.get(Job, job_id)
            seen.append((job_id, row.status if row else None, row is not None and row.enqueued_at is not None))

    assert lifecycle.enqueue(session, [job.id], send) == [job.id]

    assert seen == [(job.id, "queued", False)]  # committed before the send, marked sent only after it
    with second_session(settings) as other:
        assert other.get_one(Job, job.id).enqueued_at is not None


def test_marking_a_job_sent_on_postgres_is_one_statement_outside_a_transaction(session: Session, new_job: Job) -> None:
    """No BEGIN and COMMIT round trips around the UPDATE: a submission pays for it on its request."""
    from sqlalchemy import event

    updates: list[bool] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append(conn.connection.dbapi_connection.autocommit)

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert lifecycle.enqueue(session, [new_job.id], lambda _: None) == [new_job.id]
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert updates == [True]  # the mark, in autocommit
    session.expire_all()
    assert session.get_one(Job, new_job.id).enqueued_at is not None
    # The pooled connection went back as it was: the next use of it begins a transaction again.
    assert session.connection().connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]
    session.rollback()


def test_a_failed_send_leaves_the_committed_job_queued_and_unsent(session: Session, new_job: Job) -> None:
    def broker_down(_: str) -> None:
        raise ConnectionError("broker down")

    assert lifecycle.enqueue(session, [new_job.id], broker_down) == []
    session.expire_all()
    job = session.get_one(Job, new_job.id)
    assert job.status == "queued" and job.enqueued_at is None


def test_the_api_sends_a_new_job_after_its_commit(
    client: TestClient, tenant: TenantKey, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with second_session(settings) as s:
        dataset = dataset_row(s, tenant.id)
        s.commit()
        dataset_id = dataset.id
    (settings.resolved_models_dir / "m").mkdir(parents=True)
    (settings.resolved_models_dir / "m" / "config.json").write_text("{}")
    visible: list[str | None] = []

    def send(job_ids: Sequence[str]) -> None:
        with second_session(settings) as other:
            for job_id in job_ids:
                row = other.get(Job, job_id)
                visible.append(row.status if row else None)

    monkeypatch.setattr(dispatch, "send_jobs", send)
    resp = client.post(
        "/v1/jobs", headers=tenant.headers, json={"algorithm": "dpo", "base_model": "m", "dataset_id": dataset_id}
    )

    assert resp.status_code == 201, resp.text
    assert dispatch.flush()
    assert visible == ["queued"]


def test_a_job_submitted_at_once_is_one_statement_with_its_status_event_and_stays_in_the_session(
    session: Session, tenant: TenantKey, settings: Settings
) -> None:
    from sqlalchemy import event

    dataset = dataset_row(session, tenant.id)
    session.commit()
    job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=dataset.id, hyperparameters={})
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.lstrip().split()[0].upper())

    engine = session.get_bind()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        lifecycle.submit_now(session, job)
        session.commit()
        assert (job.status, job.attempt, job.last_event_seq, job.progress) == ("queued", 0, 1, None)
        assert (job.seed, job.max_attempts) == (0, 3)  # the columns' defaults, as a flush would have filled in
    finally:
        event.remove(engine, "before_cursor_execute", seen)

    assert statements == ["WITH"]  # the job and its event in one statement; nothing left to flush, nothing read back
    with second_session(settings) as other:
        stored = other.get_one(Job, job.id)
        assert (stored.status, stored.last_event_seq, stored.created_at) == ("queued", 1, job.created_at)
        assert (stored.seed, stored.max_attempts, stored.progress, stored.reward) == (0, 3, None, None)
        assert [(e.seq, e.type, e.data) for e in other.scalars(select(JobEvent).where(JobEvent.job_id == job.id))] == [
            (1, "status", {"status": "queued", "previous": None})
        ]


def test_a_job_submitted_at_once_with_a_taken_idempotency_key_raises_at_once(
    session: Session, new_job: Job, tenant: TenantKey
) -> None:
    from sqlalchemy.exc import IntegrityError

    session.execute(update(Job).where(Job.id == new_job.id).values(idempotency_key="k"))
    session.commit()
    again = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=new_job.dataset_id, hyperparameters={})
    again.idempotency_key = "k"
    with pytest.raises(IntegrityError):
        lifecycle.submit_now(session, again)
    session.rollback()
