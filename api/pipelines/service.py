"""Pipelines: create (every stage checked as POST /v1/jobs checks a job, its references to earlier
stages included), read, list, cancel. What happens as stages finish is api/pipelines/advance.py."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from api.core.broker import send_job
from api.core.errors import Conflict, InvalidRequest, NotFound
from api.core.ids import new_id
from api.core.pagination import fetch_page
from api.core.settings import Settings
from api.jobs import lifecycle
from api.jobs.events import lock_job
from api.jobs.models import LIVE_STATUSES, Job
from api.jobs.schemas import JobCreate
from api.jobs.service import prepare_job
from api.pipelines import advance
from api.pipelines.models import FINAL_PIPELINE_STATUSES, Pipeline, PipelineStage
from api.pipelines.schemas import PipelineCreate


class PipelineNotFound(NotFound):
    pass


class PipelineFinished(Conflict):
    code = "pipeline_finished"


def create_pipeline(
    session: Session, settings: Settings, tenant_id: str, body: PipelineCreate, idempotency_key: str | None
) -> tuple[Pipeline, bool]:
    """Check every stage, then create the pipeline and queue the jobs of the stages that read no
    other stage's output; returns (pipeline, created). A repeated Idempotency-Key returns the first."""
    if idempotency_key is not None:
        existing = _by_idempotency_key(session, tenant_id, idempotency_key)
        if existing is not None:
            return existing, False
    pipeline = Pipeline(
        id=new_id("pipe"),
        tenant_id=tenant_id,
        name=body.name,
        status="running",
        pipeline_metadata=body.metadata,
        idempotency_key=idempotency_key,
    )
    first_jobs = _check_stages(session, settings, pipeline, body)
    for position, (stage, job) in enumerate(zip(body.stages, first_jobs, strict=True)):
        row = PipelineStage(
            position=position,
            name=stage.name,
            algorithm=stage.job.algorithm,
            request=stage.job.model_dump(mode="json", exclude_unset=True),
            depends_on=sorted({name for _, name, _ in advance.stage_refs(stage.job)}),
        )
        if job is not None:
            lifecycle.submit(session, job)
            row.job_id = job.id
        pipeline.stages.append(row)
    session.add(pipeline)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # two requests with the same Idempotency-Key raced; the other one won
        existing = _by_idempotency_key(session, tenant_id, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing, False
    lifecycle.enqueue(session, [job.id for job in first_jobs if job is not None], send_job)
    return pipeline, True


def _check_stages(session: Session, settings: Settings, pipeline: Pipeline, body: PipelineCreate) -> list[Job | None]:
    """Check each stage as POST /v1/jobs would (422s name `stages[i]...`); returns the job rows of
    the stages without `stage:` references (the others' jobs are built once their inputs succeed).

    A reference to an earlier stage is checked with that stage's own base model in its place: the
    stage's output is that model trained further, so what fits or resolves for one does for the other.
    An evaluate stage's `models` entries that name stages are checked here (earlier, trained, each once)
    and left out of the job check: in place they would repeat the base model they were trained from.
    """
    algorithms: dict[str, str] = {}
    stands_in: dict[str, str] = {}
    jobs: list[Job | None] = []
    for i, stage in enumerate(body.stages):
        where = f"stages[{i}]"
        if stage.name in algorithms:
            raise InvalidRequest(f"{where}.name: another stage is already named {stage.name!r}", param=f"{where}.name")
        refs = advance.stage_refs(stage.job)
        evaluated: dict[str, str] = {}
        for field, name, producers in refs:
            param = f"{where}.job.{field}"
            if name not in algorithms:
                earlier = ", ".join(repr(n) for n in algorithms) or "none"
                raise InvalidRequest(
                    f"{param}: 'stage:{name}' names no earlier stage (a stage reads only the outputs of stages "
                    f"before it; earlier stages: {earlier})",
                    param=param,
                )
            if algorithms[name] not in producers:
                raise InvalidRequest(
                    f"{param}: stage {name!r} is a {algorithms[name]} stage; {field} needs {_wanted(field, producers)}",
                    param=param,
                )
            if field == "base_model" or field.startswith("models["):
                if name in evaluated:
                    raise InvalidRequest(
                        f"{param}: stage {name!r} is already evaluated as {evaluated[name]}; give each model once",
                        param=param,
                    )
                evaluated[name] = field
        without, positions = _without_stage_candidates(stage.job)
        body_in_place = advance.named(advance.with_refs(without, stands_in), pipeline, stage.name)
        try:
            job = prepare_job(session, settings, pipeline.tenant_id, body_in_place)
        except InvalidRequest as exc:
            if exc.param and (found := re.fullmatch(r"models\[(\d+)\]", exc.param)):
                exc.param = f"models[{positions[int(found[1])]}]"  # its index in the request's own list
            raise _in_stage(exc, i, stage.name) from exc
        jobs.append(job if not refs else None)
        algorithms[stage.name] = stage.job.algorithm
        stands_in[stage.name] = body_in_place.base_model
    return jobs


def _wanted(field: str, producers: tuple[str, ...]) -> str:
    if field == "base_model":
        return "a policy (" + ", ".join(producers) + ") stage's output"
    if field.startswith("models["):
        return "a trained model (" + ", ".join(producers) + ") stage's output"
    return "a reward model stage's output"


def _without_stage_candidates(body: JobCreate) -> tuple[JobCreate, list[int]]:
    """An evaluate request with the `stage:` entries of `models` left out (they are checked by name), and
    the index in `body.models` of each entry kept."""
    if body.models is None:
        return body, []
    positions = [i for i, ref in enumerate(body.models) if not ref.strip().startswith(advance.STAGE_PREFIX)]
    kept = [body.models[i] for i in positions]
    return body.model_copy(update={"models": kept or None}), positions


def _in_stage(exc: InvalidRequest, index: int, name: str) -> InvalidRequest:
    """A job request's 422 as the pipeline's: its param and details under `stages[i].job`."""
    prefix = f"stages[{index}].job"
    details: list[Any] = [
        {**d, "field": f"{prefix}.{d['field']}"} if isinstance(d, dict) and d.get("field") else d for d in exc.details
    ]
    error = type(exc)(
        f"stage {name!r}: {exc.message}", param=f"{prefix}.{exc.param}" if exc.param else prefix, details=details
    )
    error.code = exc.code
    return error


def pipeline_waiting_for(session: Session, tenant_id: str, dataset_id: str) -> str | None:
    """The id of a live pipeline with a stage not yet started that will train or evaluate on the
    dataset (deleting it now would fail that stage later), or None."""
    pending = session.execute(
        select(Pipeline.id, PipelineStage.request)
        .join(PipelineStage, PipelineStage.pipeline_id == Pipeline.id)
        .where(
            Pipeline.tenant_id == tenant_id,
            Pipeline.status == "running",
            PipelineStage.job_id.is_(None),
            PipelineStage.skipped_reason.is_(None),
        )
    )
    for pipeline_id, request in pending:
        if dataset_id in (request.get("dataset_id"), request.get("eval_dataset_id")):
            return str(pipeline_id)
    return None


def _by_idempotency_key(session: Session, tenant_id: str, key: str) -> Pipeline | None:
    return session.execute(
        select(Pipeline).where(Pipeline.tenant_id == tenant_id, Pipeline.idempotency_key == key)
    ).scalar_one_or_none()


def get_pipeline(session: Session, tenant_id: str, pipeline_id: str) -> Pipeline:
    pipeline = session.scalars(
        select(Pipeline)
        .where(Pipeline.id == pipeline_id)
        .options(selectinload(Pipeline.stages).selectinload(PipelineStage.job))
        .execution_options(populate_existing=True)
    ).one_or_none()
    if pipeline is None or pipeline.tenant_id != tenant_id:
        raise PipelineNotFound(f"no pipeline {pipeline_id!r}", param="pipeline_id")
    return pipeline


def list_pipelines(
    session: Session, tenant_id: str, *, limit: int, after: str | None, status: str | None = None
) -> tuple[list[Pipeline], bool]:
    query = (
        select(Pipeline)
        .where(Pipeline.tenant_id == tenant_id)
        .options(selectinload(Pipeline.stages).selectinload(PipelineStage.job))
    )
    if status is not None:
        query = query.where(Pipeline.status == status)
    return fetch_page(session, Pipeline, tenant_id, query, after, limit)


def cancel_pipeline(session: Session, settings: Settings, tenant_id: str, pipeline_id: str) -> Pipeline:
    """Cancel the live stages' jobs and skip the stages not started; idempotent; 409 once finished."""
    pipeline = get_pipeline(session, tenant_id, pipeline_id)
    if pipeline.status in ("cancelling", "cancelled"):
        return pipeline
    live = sorted(s.job_id for s in pipeline.stages if s.job_id and s.job and s.job.status in LIVE_STATUSES)
    for job_id in live:  # jobs before their pipeline: the order the life cycle's hook locks them in
        lock_job(session, job_id)
    locked = session.scalars(
        select(Pipeline).where(Pipeline.id == pipeline_id).with_for_update().execution_options(populate_existing=True)
    ).one()
    if locked.status in FINAL_PIPELINE_STATUSES:
        status = locked.status
        session.rollback()
        if status == "cancelled":
            return get_pipeline(session, tenant_id, pipeline_id)
        raise PipelineFinished(
            f"pipeline {pipeline_id} already {status}; only a running pipeline can be cancelled", param="pipeline_id"
        )
    if locked.status == "running":
        locked.status = "cancelling"
        advance.advance(session, pipeline_id, settings)
    session.commit()
    return get_pipeline(session, tenant_id, pipeline_id)
