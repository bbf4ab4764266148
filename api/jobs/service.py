"""Jobs: create (checking everything checkable first), read, list, cancel, pause, resume, events, metrics.

Status changes and sending ids to the broker go through api/jobs/lifecycle.py: create and resume
commit the job row and its status event, then send the id (enqueue-after-commit; a new job's from
the dispatcher thread, api/jobs/dispatch.py, after the response); cancel, pause and
resume ask the life cycle what they do to the job's status, all three through `_change_status`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Engine, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.core.broker import send_job
from api.core.errors import AlignError, Conflict, InvalidRequest, NotFound
from api.core.ids import new_id
from api.core.pagination import fetch_page
from api.core.settings import Settings
from api.core.validation import invalid_from_pydantic
from api.datasets.models import Dataset
from api.jobs import dispatch, evaluation, lifecycle
from api.jobs.events import lock_job
from api.jobs.models import FINAL_STATUSES, Job, JobEvent
from api.jobs.schemas import JobCreate, JobPublic
from api.models_dir import references
from api.reward_models.models import RewardModel
from trainer.config import (
    DATASET_KIND,
    EVALUATE_KINDS,
    ModelComponent,
    RewardComponent,
    check_reward_metric,
    parse_hyperparameters,
)

ONLINE = ("grpo", "ppo")
KIND_NOUN = {"preference": "preference pairs", "prompt": "prompts", "sft": "SFT rows"}


class JobNotFound(NotFound):
    pass


class JobFinished(Conflict):
    code = "job_finished"


class JobNotPausable(Conflict):
    code = "job_not_pausable"


class JobNotResumable(Conflict):
    code = "job_not_resumable"


def create_job(
    session: Session, settings: Settings, tenant_id: str, body: JobCreate, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Validate and create a queued job; returns (job, created). A repeated Idempotency-Key returns the first job.

    The key is not looked up first (a round trip every submission would pay for the few that are
    retries): a repeated key's INSERT hits the key's unique constraint (also when two requests with
    one key race), and a repeated key whose request no longer validates (its dataset deleted since,
    say) is looked up before the error is returned. Either way the first job is returned, as it is.
    """
    try:
        job = prepare_job(session, settings, tenant_id, body, idempotency_key)
        lifecycle.submit_now(session, job)
        session.commit()
    except (AlignError, IntegrityError):
        session.rollback()
        existing = _by_idempotency_key(session, tenant_id, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    # Sent (and marked sent) by this process's dispatcher thread after the response: the request waits
    # for neither the broker nor that UPDATE. A send that fails, or never happens (the process died),
    # leaves the committed job queued with enqueued_at NULL for the workers' reaper to send again.
    dispatch.send_after_commit(job.id)
    return job, True


def prepare_job(
    session: Session, settings: Settings, tenant_id: str, body: JobCreate, idempotency_key: str | None = None
) -> Job:
    """Check everything checkable about a job request and build its row, not yet added to the session
    (create_job submits it; a pipeline (api/pipelines) builds its stages' jobs with it too)."""
    try:
        hyperparameters = parse_hyperparameters(body.algorithm, body.hyperparameters).model_dump(mode="json")
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, "hyperparameters") from exc
    evaluate = body.algorithm == "evaluate"
    if body.models is not None and not evaluate:
        raise InvalidRequest("models applies to evaluate only (the candidates it scores)", param="models")
    if evaluate:
        evaluation.check_options(body)
    needed = EVALUATE_KINDS if evaluate else (DATASET_KIND[body.algorithm],)
    kind = _check_dataset(session, tenant_id, body.dataset_id, "dataset_id", body.algorithm, needed)
    if body.eval_dataset_id is not None:
        _check_dataset(session, tenant_id, body.eval_dataset_id, "eval_dataset_id", body.algorithm, needed)
    reward = _check_reward(
        session, settings, tenant_id, body, wants_reward=body.algorithm in ONLINE or kind == "prompt"
    )
    _check_best_metric(session, body, hyperparameters)
    references.check(session, settings, tenant_id, body.base_model, "base_model")
    models = evaluation.check_models(session, settings, tenant_id, body)
    if settings.worker_gpu_memory_gb is not None and not evaluate:  # opt-in: refuse what cannot fit the workers' GPUs
        from api.plan.lengths import cached as cached_lengths
        from api.plan.service import check_job_fits

        stored = session.get(RewardModel, body.reward_model_id) if body.reward_model_id else None
        components = reward if reward is not None else (stored.components if stored is not None else None)
        # measured by an earlier plan of this dataset (any API process); _check_dataset made sure it is the tenant's
        lengths = cached_lengths(session, body.dataset_id, body.base_model)
        check_job_fits(settings, body.algorithm, hyperparameters, body.lora, body.base_model, components, lengths)

    return Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        name=body.name,
        algorithm=body.algorithm,
        status="queued",
        base_model=body.base_model.strip(),
        dataset_id=body.dataset_id,
        eval_dataset_id=body.eval_dataset_id,
        reward_model_id=body.reward_model_id,
        reward=reward,
        models=models,
        hyperparameters=hyperparameters,
        lora=body.lora.model_dump(mode="json") if body.lora else None,
        seed=body.seed,
        job_metadata=body.metadata,
        integrations=[i.model_dump(mode="json", exclude_none=True) for i in body.integrations]
        if body.integrations
        else None,
        idempotency_key=idempotency_key,
        max_attempts=settings.max_attempts,
        attempt=0,
        last_event_seq=0,
    )


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> Job | None:
    return session.execute(
        select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key)
    ).scalar_one_or_none()


def _check_dataset(
    session: Session, tenant_id: str, dataset_id: str, param: str, algorithm: str, needed: tuple[str, ...]
) -> str:
    """The dataset's kind, once it is this tenant's and of a kind in `needed`."""
    # Share-locked until the job is committed, so a concurrent DELETE of the dataset (FOR UPDATE) either
    # waits and then sees this job as live (409), or wins and this check sees the dataset gone. A share
    # lock, not FOR UPDATE: submissions to one dataset do not wait for each other's commits (under load
    # they queued behind one another for up to half a second each, in Postgres's slow-statement log).
    dataset = session.execute(
        select(Dataset)
        .where(Dataset.id == dataset_id, Dataset.tenant_id == tenant_id, Dataset.deleted_at.is_(None))
        .with_for_update(read=True)
    ).scalar_one_or_none()
    if dataset is None:
        raise InvalidRequest(f"no dataset {dataset_id!r}", param=param)
    if dataset.kind not in needed:
        nouns = " or ".join(KIND_NOUN[k] for k in needed)
        kinds = " or ".join(needed)
        raise InvalidRequest(
            f"{dataset.kind} dataset ({dataset.format} format) given to {algorithm}, which needs {nouns} "
            f"(a {kinds} dataset)",
            param=param,
        )
    return dataset.kind


def _check_reward(
    session: Session, settings: Settings, tenant_id: str, body: JobCreate, *, wants_reward: bool
) -> list[dict[str, Any]] | None:
    has_reward = body.reward_model_id is not None or body.reward is not None
    if not wants_reward:
        if has_reward:
            param = "reward_model_id" if body.reward_model_id is not None else "reward"
            if body.algorithm == "evaluate":
                message = (
                    "evaluating preference pairs needs no reward (a reward scores completions of a prompt dataset)"
                )
            else:
                message = f"a reward applies to grpo and ppo (and evaluate on prompts) only, not {body.algorithm}"
            raise InvalidRequest(message, param=param)
        return None
    if body.reward_model_id is not None and body.reward is not None:
        raise InvalidRequest("give reward_model_id or an inline reward, not both", param="reward")
    if body.reward_model_id is not None:
        reward_model = session.get(RewardModel, body.reward_model_id)
        if reward_model is None or reward_model.tenant_id != tenant_id:
            raise InvalidRequest(f"no reward model {body.reward_model_id!r}", param="reward_model_id")
        return None
    if not body.reward:
        what = "evaluate on a prompt dataset" if body.algorithm == "evaluate" else body.algorithm
        raise InvalidRequest(f"{what} needs a reward: give reward_model_id or inline reward components", param="reward")
    check_components(session, settings, tenant_id, body.reward, "reward")
    return [c.model_dump(mode="json", exclude_none=True) for c in body.reward]


def _check_best_metric(session: Session, body: JobCreate, hyperparameters: dict[str, Any]) -> None:
    """best_metric is measured on the eval set, and eval/rewards/<name> must name a reward component."""
    best = hyperparameters.get("best_metric")
    if best is None:
        return
    if body.eval_dataset_id is None:
        raise InvalidRequest(
            f"best_metric {best!r} is measured on held-out data: give eval_dataset_id (or drop best_metric "
            "and early_stopping_patience)",
            param="hyperparameters.best_metric",
        )
    if body.reward is not None:
        components: list[Any] = list(body.reward)
    elif body.reward_model_id is not None:
        stored = session.get(RewardModel, body.reward_model_id)
        components = parse_components(stored.components if stored is not None else [], "reward")
    else:
        return
    try:
        check_reward_metric(best, components)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="hyperparameters.best_metric") from exc


def check_components(session: Session, settings: Settings, tenant_id: str, components: list[Any], param: str) -> None:
    """Every model component's MODEL_REF must resolve for this tenant."""
    for i, component in enumerate(components):
        if isinstance(component, ModelComponent):
            references.check(session, settings, tenant_id, component.model, f"{param}[{i}].model")


def parse_components(values: Any, param: str) -> list[Any]:
    try:
        return TypeAdapter(list[RewardComponent]).validate_python(values)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc, param) from exc


_jobs = Job.__table__.c
_READ_JOB = select(
    *(_jobs[name] for name in JobPublic.COLUMNS if name != "metadata"), _jobs["metadata"].label("job_metadata")
).where(_jobs.id == bindparam("job_id"), _jobs.tenant_id == bindparam("tenant_id"))


def read_job(session: Session, tenant_id: str, job_id: str) -> JobPublic:
    """A job as the API shows it, read with one Core SELECT of the columns JobPublic needs: no ORM object,
    identity map or attribute instrumentation (a job GET's hot path: clients poll it), on a connection of
    the session's engine rather than through the session's transaction bookkeeping. Another tenant's job
    is not found, as in get_job."""
    engine = session.get_bind()
    assert isinstance(engine, Engine)  # the API's sessionmakers bind engines (api/core/db.py)
    with engine.connect() as connection:
        row = connection.execute(_READ_JOB, {"job_id": job_id, "tenant_id": tenant_id}).one_or_none()
    if row is None:
        raise JobNotFound(f"no job {job_id!r}", param="job_id")
    return JobPublic.of(row)


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.tenant_id != tenant_id:
        raise JobNotFound(f"no job {job_id!r}", param="job_id")
    return job


def list_jobs(
    session: Session,
    tenant_id: str,
    *,
    limit: int,
    after: str | None,
    status: str | None = None,
    algorithm: str | None = None,
) -> tuple[list[Job], bool]:
    query = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Job.status == status)
    if algorithm is not None:
        query = query.where(Job.algorithm == algorithm)
    return fetch_page(session, Job, tenant_id, query, after, limit)


def cancel_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """queued -> cancelled at once; running -> cancelling (the worker stops the trainer); idempotent."""
    return _change_status(
        session,
        tenant_id,
        job_id,
        lambda s, job: lifecycle.request_cancel(s, job, reason="cancelled by the user"),
        lambda status: JobFinished(f"job {job_id} already {status}; only queued or running jobs can be cancelled"),
    )


def pause_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """queued -> paused at once; running -> pausing (the worker saves at the next step boundary); idempotent."""
    return _change_status(
        session,
        tenant_id,
        job_id,
        lifecycle.request_pause,
        lambda status: JobNotPausable(
            f"job {job_id} is {status}; only queued or running jobs can be paused"
            + (" (it is being cancelled)" if status == "cancelling" else "")
        ),
    )


def resume_job(session: Session, tenant_id: str, job_id: str) -> Job:
    """paused -> queued, sent to the broker after the commit; a queued or running job is returned as it is."""
    return _change_status(
        session,
        tenant_id,
        job_id,
        lifecycle.resume,
        lambda status: JobNotResumable(
            f"job {job_id} is {status}; "
            + ("wait until it is paused, then resume it" if status == "pausing" else "only paused jobs can be resumed")
        ),
        queues=True,
    )


def _change_status(
    session: Session,
    tenant_id: str,
    job_id: str,
    change: Callable[[Session, Job], bool],
    refused: Callable[[str], Conflict],
    *,
    queues: bool = False,
) -> Job:
    """A user's status change (cancel, pause, resume): lock the tenant's job, ask the life cycle for
    `change` (one of its request functions: True when it moved the job, False when there was nothing
    to do), commit, and return the job.

    A change the life cycle refuses rolls back and raises `refused(status)`, the status the job was
    in; one with nothing to do rolls back and returns the job as it is. `queues`: the change put the
    job back in the queue, so it is committed and sent to the broker (enqueue-after-commit) and
    re-read, sent mark included.
    """
    get_job(session, tenant_id, job_id)
    job = lock_job(session, job_id)
    try:
        changed = change(session, job)
    except lifecycle.ForbiddenTransition:
        status = job.status
        session.rollback()
        raise refused(status) from None
    if not changed:
        session.rollback()
        return get_job(session, tenant_id, job_id)
    if queues:
        lifecycle.enqueue(session, [job.id], send_job)
        return get_job(session, tenant_id, job_id)
    session.commit()
    return job


def list_events(session: Session, job: Job, *, after: int, limit: int) -> tuple[list[JobEvent], bool]:
    rows = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job.id, JobEvent.seq > after)
            .order_by(JobEvent.seq)
            .limit(limit + 1)
        )
    )
    return rows[:limit], len(rows) > limit


def is_final(status: str) -> bool:
    return status in FINAL_STATUSES


def metric_series(session: Session, job: Job) -> dict[str, list[tuple[int, float]]]:
    """Every metrics event of the job as {name: [[step, value], ...]} in step order.

    A metrics event's data is the trainer's event without its type: {"step", "values": {...}}.
    A step logged twice (a resumed attempt re-runs steps after its checkpoint) keeps the later value.
    """
    series: dict[str, dict[int, float]] = {}
    rows = session.scalars(
        select(JobEvent.data).where(JobEvent.job_id == job.id, JobEvent.type == "metrics").order_by(JobEvent.seq)
    )
    for data in rows:
        step = data.get("step")
        values = data.get("values", {})
        if not isinstance(step, int) or not isinstance(values, dict):
            continue
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                series.setdefault(name, {})[step] = float(value)
    return {name: sorted(points.items()) for name, points in sorted(series.items())}
