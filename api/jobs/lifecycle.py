"""The job life cycle (DESIGN §5): every change of `jobs.status`, and sending job ids to the broker.

    queued --claim--> running --> succeeded | failed | cancelled
    queued --cancel--> cancelled
    running --cancel--> cancelling --> cancelled (or failed, when stopping the trainer broke)
    running --lease expired--> queued (the next claim adds one to the attempt) | failed (max_attempts)
    running --pause--> pausing --> paused (the trainer saved at a step boundary) --resume--> queued
    queued --pause--> paused (at once: nothing runs, nothing to save)
    pausing --> succeeded | failed (the run ended before its next step boundary) | cancelling
    pausing --lease expired / worker shut down--> paused (resumed from the last checkpoint)
    paused --cancel--> cancelled

Pausing does not use up `max_attempts`: the attempt a worker ends by pausing is given back
(`max_attempts` + 1) when the job reaches `paused`, so a job paused and resumed any number of times
still has all its retries for real failures. An attempt cut short by a dead worker while pausing
counts, as any other lost attempt does.

`TRANSITIONS` is the table of allowed moves. Every status change goes through it: `transition` (and
`claim`, its one conditional-UPDATE form) refuses a move the table lacks, stamps `started_at` on the
first run and `finished_at` on a final status, records a failure's error, releases the lease where
the job leaves a worker, and appends exactly one `status` event. The caller holds the row lock
(api.jobs.events.lock_job) and commits. To add a status, add its row to `TRANSITIONS` and, where it
applies, to `ON_CANCEL`, `ON_PAUSE`, `ON_LEASE_EXPIRY` or `HELD_STATUSES`.

Enqueue-after-commit: `enqueue` commits the session first, then sends each job id and marks it sent
(`enqueued_at`). So a worker that receives an id always finds the row, and the row stays the truth
when a send fails: the job stays queued with `enqueued_at` NULL and a worker's reaper sends it again.
The API (resume; a new job through its dispatcher thread, api/jobs/dispatch.py, after the create's
commit), the reaper (requeued and unsent jobs), the runner (a job handed back on shutdown) and
nothing else call it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any, cast

from sqlalchemy import Executable, Table, bindparam, insert, inspect, literal, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from api.core.db import utcnow
from api.core.ids import new_id
from api.jobs.events import append_events, lock_job
from api.jobs.models import FINAL_STATUSES, Job, JobEvent

log = logging.getLogger("alignd.jobs")

Send = Callable[[str], None]
"""Sends "job X is ready" to the broker (api.core.broker.sender); raises when it could not."""

SendAll = Callable[[Sequence[str]], None]
"""Sends "job X is ready" for many jobs at once (api.core.broker.send_jobs); raises when it could not."""

TRANSITIONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "queued": frozenset({"running", "cancelled", "paused"}),
        "running": frozenset({"succeeded", "failed", "cancelled", "cancelling", "queued", "pausing"}),
        "cancelling": frozenset({"cancelled", "failed"}),
        "pausing": frozenset({"paused", "succeeded", "failed", "cancelling"}),
        "paused": frozenset({"queued", "cancelled"}),
        "succeeded": frozenset(),
        "failed": frozenset(),
        "cancelled": frozenset(),
    }
)
"""status -> the statuses a job may move to from it. A final status has no way out."""

ON_CANCEL: Mapping[str, str] = MappingProxyType(
    {"queued": "cancelled", "paused": "cancelled", "running": "cancelling", "pausing": "cancelling"}
)
"""What a user's cancel does to a job in each status (a job on a worker is stopped by its worker)."""

ALREADY_CANCELLED = ("cancelling", "cancelled")
"""Statuses where a cancel is under way or done: cancelling again changes nothing."""

ON_PAUSE: Mapping[str, str] = MappingProxyType({"queued": "paused", "running": "pausing"})
"""What a user's pause does to a job in each status (a running job is saved and stopped by its worker)."""

ALREADY_PAUSED = ("pausing", "paused")
"""Statuses where a pause is under way or done: pausing again changes nothing."""

ALREADY_RESUMED = ("queued", "running")
"""Statuses a resume has nothing to do in (a repeated resume finds the job queued or running again)."""

ON_LEASE_EXPIRY: Mapping[str, str] = MappingProxyType(
    {"running": "queued", "cancelling": "cancelled", "pausing": "paused"}
)
"""Where a job goes when its worker stopped renewing the lease (`queued` becomes `failed` once the
job used all its attempts; a pausing job is paused: its resume continues from the last checkpoint)."""

HELD_STATUSES = tuple(ON_LEASE_EXPIRY)
"""Statuses in which a worker holds the job under a lease (heartbeat, reaper, ownership checks)."""


class ForbiddenTransition(ValueError):
    """A status change the life cycle does not allow."""

    def __init__(self, job_id: str, current: str, new: str) -> None:
        super().__init__(f"job {job_id}: {current} -> {new} is not a transition of the job life cycle")
        self.current, self.new = current, new


def allowed(current: str, new: str) -> bool:
    """Whether the table lets a job move from `current` to `new`."""
    return new in TRANSITIONS.get(current, frozenset())


def submit(session: Session, job: Job) -> JobEvent:
    """Add a new job row: it enters the life cycle as `queued` (no attempt yet), with its first status event."""
    job.id = job.id or new_id("job")  # its events refer to it before the INSERT
    job.status, job.attempt, job.last_event_seq = "queued", 0, 0
    session.add(job)
    return append_events(session, job, [("status", {"status": "queued", "previous": None})])[0]


def submit_now(session: Session, job: Job) -> None:
    """`submit`, written at once: on Postgres the job row and its first status event go in one
    statement (`WITH new_job AS (INSERT INTO jobs ...) INSERT INTO job_events ...`), one round trip
    where the unit of work's flush makes two, and the job is then in the session as if flushed
    (a job submission pays this on its request). Raises IntegrityError here, not at the commit, when
    the job's Idempotency-Key is taken. Elsewhere (SQLite, whose WITH cannot hold an INSERT) it is
    `submit` and a flush."""
    if session.get_bind().dialect.name != "postgresql":
        submit(session, job)
        session.flush()
        return
    now = utcnow()
    job.id = job.id or new_id("job")
    job.status, job.attempt, job.last_event_seq = "queued", 0, 1
    job.created_at = job.created_at or now
    state = inspect(job)
    given = {}
    for prop in state.mapper.column_attrs:
        column = prop.columns[0]
        if prop.key not in state.dict and column.default is not None:  # the column's default, known to the object
            default = column.default
            setattr(job, prop.key, default.arg(None) if default.is_callable else default.arg)
        if prop.key in state.dict:
            given[column.name] = state.dict[prop.key]
    statement = _submit_statement(tuple(given))
    session.execute(statement, {**{f"job_{name}": value for name, value in given.items()}, "event_created_at": now})
    for prop in state.mapper.column_attrs:  # what the INSERT left out is NULL: loaded as such, never read back
        if prop.key not in state.dict:
            setattr(job, prop.key, None)
    make_transient_to_detached(job)
    session.add(job)  # persistent, nothing to flush


@lru_cache(maxsize=16)
def _submit_statement(columns: tuple[str, ...]) -> Executable:
    """submit_now's statement for a job row that gives `columns`, built once (building it for every
    submission cost more than sending it): the values are bound at execution (`job_<column>` and
    `event_created_at`)."""
    jobs, events = cast(Table, Job.__table__), cast(Table, JobEvent.__table__)
    values = {name: bindparam(f"job_{name}", type_=jobs.c[name].type) for name in columns}
    new_job = insert(jobs).values(values).returning(jobs.c.id).cte("new_job")
    first_event = select(
        new_job.c.id,
        literal(1, events.c.seq.type),
        literal("status", events.c.type.type),
        literal({"status": "queued", "previous": None}, events.c.data.type),
        bindparam("event_created_at", type_=events.c.created_at.type),
    )
    return insert(events).from_select(["job_id", "seq", "type", "data", "created_at"], first_event)


def transition(
    session: Session, job: Job, status: str, *, error: tuple[str, str] | None = None, **data: Any
) -> JobEvent:
    """Move a locked job to `status`: check the table, apply its effects, append one status event.

    `error` is (code, message) of a failure: stored on the job and in the event. `data` goes into the
    event beside `status` and `previous` (e.g. `reason`). Raises ForbiddenTransition.
    """
    previous = job.status
    if not allowed(previous, status):
        raise ForbiddenTransition(job.id, previous, status)
    job.status = status
    return _entered(session, job, previous, error, data)


def claim(session: Session, job_id: str, worker_id: str, lease_seconds: float) -> Job | None:
    """queued -> running for `worker_id` with one conditional UPDATE, so that of two deliveries of
    one job exactly one gets it; the attempt number goes up by one. None when the job was not queued.
    The caller commits."""
    if not allowed("queued", "running"):  # the table is the rule, even for this fast path
        raise ForbiddenTransition(job_id, "queued", "running")
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            worker_id=worker_id,
            attempt=Job.attempt + 1,
            lease_expires_at=utcnow() + timedelta(seconds=lease_seconds),
        )
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount == 0:  # type: ignore[attr-defined]
        return None
    job = lock_job(session, job_id)
    _entered(session, job, "queued", None, {"attempt": job.attempt, "worker_id": worker_id})
    return job


def fail(session: Session, job: Job, code: str, message: str, **data: Any) -> JobEvent:
    """Move a locked job to `failed`, saying why (`code`, and a `message` a user can act on)."""
    return transition(session, job, "failed", error=(code, message), **data)


def request_cancel(session: Session, job: Job, reason: str) -> bool:
    """Apply a user's cancel to a locked job (see ON_CANCEL). False when a cancel is already under
    way or done; raises ForbiddenTransition for a job that cannot be cancelled (a final one)."""
    if job.status in ALREADY_CANCELLED:
        return False
    target = ON_CANCEL.get(job.status)
    if target is None:
        raise ForbiddenTransition(job.id, job.status, "cancelled")
    transition(session, job, target, reason=reason)
    return True


def expire_lease(session: Session, job: Job) -> str:
    """A locked held job whose worker stopped renewing its lease: cancelling -> cancelled (nobody
    is left to stop), pausing -> paused (a resume continues from the last checkpoint), running ->
    queued (resumed by the next claim), or failed once all attempts are used. The worker is
    released either way. Returns the new status."""
    dead_worker, job.worker_id = job.worker_id, None
    target = ON_LEASE_EXPIRY.get(job.status)
    if target is None:
        raise ForbiddenTransition(job.id, job.status, "queued")
    if target in ("cancelled", "paused"):
        transition(session, job, target, reason="the worker running the job stopped responding")
    elif job.attempt >= job.max_attempts:
        step = (job.progress or {}).get("step")
        message = (
            f"The worker running this job died {job.attempt} times"
            + (f" (last seen at step {step})" if step is not None else "")
            + "; check the worker logs for out-of-memory kills or crashes, then resubmit"
            " (a smaller batch_size or max_length, or LoRA, lowers memory use)."
        )
        fail(session, job, "worker_lost", message)
    else:
        transition(session, job, target, reason="lease expired", attempt=job.attempt, worker_id=dead_worker)
    log.warning("job %s: lease of %s expired; now %s", job.id, dead_worker, job.status)
    return job.status


def hand_back(session: Session, job: Job, reason: str, *, saved: bool = False) -> str:
    """A worker that is shutting down (warm) returns its locked held job at once instead of letting
    the lease expire: running -> queued (the next claim resumes from the last checkpoint), or failed
    when that was its last attempt; cancelling -> cancelled; pausing -> paused. The attempt counts,
    as on lease expiry, unless `saved`: the trainer saved a checkpoint at the step boundary it
    stopped at, so nothing was lost and the attempt is given back (as a pause's is). The caller
    sends a requeued job (`enqueue`). Returns the new status."""
    worker, job.worker_id = job.worker_id, None
    if saved:
        job.max_attempts += 1
    if job.status == "cancelling":
        transition(session, job, "cancelled", reason=reason)
    elif job.status == "pausing":  # the user asked for a pause: keep it (resumed from the last checkpoint)
        transition(session, job, "paused", reason=reason)
    elif job.attempt >= job.max_attempts:
        message = (
            f"The worker running the last of this job's {job.max_attempts} attempts stopped ({reason})"
            " before it finished; resubmit the job."
        )
        fail(session, job, "worker_shutdown", message)
    else:
        transition(session, job, "queued", reason=reason, attempt=job.attempt, worker_id=worker, saved=saved)
    return job.status


def request_pause(session: Session, job: Job) -> bool:
    """Apply a user's pause to a locked job (see ON_PAUSE). False when a pause is already under way
    or done; raises ForbiddenTransition for a job that cannot be paused (cancelling or final)."""
    if job.status in ALREADY_PAUSED:
        return False
    target = ON_PAUSE.get(job.status)
    if target is None:
        raise ForbiddenTransition(job.id, job.status, "paused")
    transition(session, job, target, reason="paused by the user")
    return True


def paused(session: Session, job: Job, step: int | None) -> JobEvent:
    """pausing -> paused for a locked job whose trainer saved the checkpoint of `step` (None: nothing
    new was trained since the last checkpoint) and stopped. The worker is released and the attempt
    it ends is given back, so pausing never uses up `max_attempts`."""
    job.max_attempts += 1
    return transition(session, job, "paused", reason="paused at a step boundary", step=step)


def resume(session: Session, job: Job) -> bool:
    """A user's resume of a locked job: paused -> queued (the caller sends it with `enqueue`; the next
    claim continues from the latest checkpoint). False when the job is queued or running already;
    raises ForbiddenTransition for any other status (pausing: resume once it is paused)."""
    if job.status in ALREADY_RESUMED:
        return False
    if job.status != "paused":
        raise ForbiddenTransition(job.id, job.status, "queued")
    transition(session, job, "queued", reason="resumed by the user")
    return True


def enqueue(session: Session, job_ids: Sequence[str], send: Send) -> list[str]:
    """Commit the session, then send each job id to the broker and mark it sent; returns the ids sent.

    A send that fails is logged and the job stays queued with `enqueued_at` NULL, which a worker's
    reaper sends again (a duplicate delivery is harmless: `claim` takes a job once).
    """
    session.commit()
    sent = []
    for job_id in job_ids:
        try:
            send(job_id)
        except Exception:
            log.exception("could not send job %s to the broker; it stays queued and is sent again later", job_id)
            continue
        sent.append(job_id)
    if sent:  # a crash before this UPDATE leaves them unmarked: the reaper sends them again (harmless)
        _mark_sent(session, sent)
    return sent


def enqueue_all(session: Session, job_ids: Sequence[str], send_all: SendAll) -> list[str]:
    """`enqueue` for a sender that sends many ids at once (api.core.broker.send_jobs): commit, send them
    all, mark them all sent in one UPDATE; returns the ids sent. When the send raises, none is marked
    sent (some may have reached the broker: the reaper sends those again too, harmlessly)."""
    session.commit()
    if not job_ids:
        return []
    try:
        send_all(job_ids)
    except Exception:
        log.exception("could not send jobs %s to the broker; they stay queued and are sent again later", job_ids)
        return []
    _mark_sent(session, list(job_ids))
    return list(job_ids)


def _mark_sent(session: Session, job_ids: list[str]) -> None:
    """Record that `job_ids` reached the broker, in one UPDATE. On Postgres one statement that commits
    on its own (autocommit): a lone UPDATE needs no BEGIN and COMMIT round trips around it. The session
    holds no transaction here (enqueue committed it), so the connection it checks out for this
    statement can be put in autocommit. A job paused between its send and this mark is not marked: it
    keeps `enqueued_at` NULL, as entering `paused` left it (a send from the dispatcher thread can land
    after the pause of the job it sent). One claimed meanwhile is marked, as before."""
    if session.get_bind().dialect.name == "postgresql":
        session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    session.execute(update(Job).where(Job.id.in_(job_ids), Job.status != "paused").values(enqueued_at=utcnow()))
    session.commit()  # in autocommit, nothing was begun: no COMMIT goes to the server


def _entered(
    session: Session, job: Job, previous: str, error: tuple[str, str] | None, data: dict[str, Any]
) -> JobEvent:
    """The effects of a job having entered `job.status` from `previous`, and its one status event."""
    now = utcnow()
    if job.status == "running" and job.started_at is None:
        job.started_at = now
    if job.status == "running" and previous == "queued":  # a new attempt: the stuck-job clock restarts
        job.last_step_at, job.steps_per_second, job.relay_lag_seconds = now, None, None
    if job.status in ("queued", "paused"):  # off its worker: the next claim starts a new attempt
        job.worker_id = None
        job.lease_expires_at = None
        job.enqueued_at = None
    if job.status in FINAL_STATUSES:
        job.finished_at = now
        job.lease_expires_at = None
    if error is not None:
        job.error_code, job.error_message = error
        data = {**data, "error": {"code": error[0], "message": error[1]}}
    event = append_events(session, job, [("status", {"status": job.status, "previous": previous, **data})])[0]
    if job.status in FINAL_STATUSES:
        # A pipeline stage's end starts, skips or settles the stages after it in this same transaction.
        from api.pipelines.advance import stage_finished  # pipelines build on the life cycle, not the reverse

        stage_finished(session, job)
    return event
