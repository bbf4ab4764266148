"""What a pipeline does when one of its stages' jobs reaches a final status (DESIGN §4, Workflow).

The stages' job rows are the truth; `advance` reads them under the pipeline's row lock and acts:
- every stage's job succeeded: the pipeline succeeded, its output is the last stage's checkpoint;
- a stage's inputs have all succeeded: the stage becomes a job (its `stage:<name>` references
  resolved to `job:<id>`, built and checked as POST /v1/jobs does), queued in the same transaction;
- a stage's job failed or was cancelled (or a stage could not become a job): the pipeline failed or
  was cancelled, the stages not started are skipped with the reason, and stages still running are
  cancelled (they could only feed stages that will not run);
- the pipeline is being cancelled: stages not started are skipped, live ones cancelled, and the
  pipeline is cancelled once none is live.

Who calls it: the job life cycle, in the transaction of every final transition of a job
(`stage_finished`), so a stage's success and the creation of the stages it unblocks commit together;
the pipeline's cancel; and every worker's reaper (`repair`), which re-runs it for every pipeline not
yet settled, so nothing is lost to a crash or a bug between the two. New jobs are sent to the broker
after the commit by whoever committed: the worker that ran the finished stage (`unsent_jobs`), the
reaper, or, failing both, the reaper's resend of unsent jobs.

Locks: a job's row before its pipeline's (the life cycle holds the job's lock when it calls the
hook); with the pipeline locked, other jobs only with SKIP LOCKED, so two stages finishing at once,
a cancel and a reaper never wait on each other in a cycle. A job skipped that way is cancelled by a
later pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db import utcnow
from api.core.errors import InvalidRequest
from api.core.settings import Settings, get_settings
from api.core.validation import invalid_from_pydantic
from api.jobs import lifecycle
from api.jobs.models import LIVE_STATUSES, Job
from api.jobs.schemas import JobCreate
from api.pipelines.models import FINAL_PIPELINE_STATUSES, LIVE_PIPELINE_STATUSES, Pipeline, PipelineStage
from trainer.config import ModelComponent

log = logging.getLogger("alignd.pipelines")

STAGE_PREFIX = "stage:"
POLICY_ALGORITHMS = ("sft", "dpo", "grpo", "ppo")
"""Algorithms whose output is a policy a later stage can train further (`base_model: stage:<name>`)."""
REWARD_ALGORITHMS = ("reward",)
"""Algorithms whose output is a reward model (`{"type": "model", "model": "stage:<name>"}`)."""
EVALUATED_ALGORITHMS = POLICY_ALGORITHMS + REWARD_ALGORITHMS
"""Algorithms whose output an evaluate stage can score (`models: ["stage:<name>", ...]`): policies and
reward models alike (trainer.evaluate scores causal LMs and sequence classifiers)."""

_ADVANCING = "alignd.pipelines.advancing"
"""session.info key: pipelines being advanced in this session (their stages' own transitions then
change nothing more: the pass that cancels them settles the pipeline)."""


def stage_refs(body: JobCreate) -> list[tuple[str, str, tuple[str, ...]]]:
    """The `stage:<name>` references of a job request: (field, stage name, algorithms that can produce it)."""
    refs: list[tuple[str, str, tuple[str, ...]]] = []
    if body.base_model.strip().startswith(STAGE_PREFIX):
        refs.append(("base_model", body.base_model.strip()[len(STAGE_PREFIX) :], POLICY_ALGORITHMS))
    for i, component in enumerate(body.reward or []):
        if isinstance(component, ModelComponent) and component.model.strip().startswith(STAGE_PREFIX):
            refs.append((f"reward[{i}].model", component.model.strip()[len(STAGE_PREFIX) :], REWARD_ALGORITHMS))
    for i, ref in enumerate(body.models or []):
        if ref.strip().startswith(STAGE_PREFIX):
            refs.append((f"models[{i}]", ref.strip()[len(STAGE_PREFIX) :], EVALUATED_ALGORITHMS))
    return refs


def with_refs(body: JobCreate, models: Mapping[str, str]) -> JobCreate:
    """The request with each `stage:<name>` replaced by `models[name]` (a MODEL_REF)."""

    def resolve(ref: str) -> str:
        ref = ref.strip()
        return models[ref[len(STAGE_PREFIX) :]] if ref.startswith(STAGE_PREFIX) else ref

    reward = body.reward
    if reward is not None:
        reward = [
            c.model_copy(update={"model": resolve(c.model)}) if isinstance(c, ModelComponent) else c for c in reward
        ]
    candidates = [resolve(ref) for ref in body.models] if body.models is not None else None
    return body.model_copy(update={"base_model": resolve(body.base_model), "reward": reward, "models": candidates})


def settings_of(session: Session) -> Settings:
    """The Settings a session works under: a worker's session carries its own (worker/db.py)."""
    settings = session.info.get("settings")
    return settings if isinstance(settings, Settings) else get_settings()


def stage_finished(session: Session, job: Job) -> None:
    """The life cycle's hook: `job` just reached a final status (its row is locked); if it is a
    pipeline stage, advance that pipeline in the same transaction."""
    pipeline_id = session.scalar(select(PipelineStage.pipeline_id).where(PipelineStage.job_id == job.id))
    if pipeline_id is None or pipeline_id in session.info.get(_ADVANCING, ()):
        return
    advance(session, pipeline_id)


def advance(
    session: Session, pipeline_id: str, settings: Settings | None = None, *, skip_locked: bool = False
) -> list[str]:
    """Bring a pipeline in line with its stages' jobs (see the module docstring); the caller commits.

    Returns the ids of the jobs it created (queued, not yet sent). With `skip_locked`, a pipeline
    another transaction holds is left alone (the reaper's pass)."""
    query = select(Pipeline).where(Pipeline.id == pipeline_id).execution_options(populate_existing=True)
    pipeline = session.scalars(query.with_for_update(skip_locked=skip_locked)).one_or_none()
    if pipeline is None:
        return []
    advancing = session.info.setdefault(_ADVANCING, set())
    advancing.add(pipeline_id)
    try:
        return _advance(session, pipeline, settings)
    finally:
        advancing.discard(pipeline_id)


def _advance(session: Session, pipeline: Pipeline, settings: Settings | None) -> list[str]:
    stages = list(
        session.scalars(
            select(PipelineStage)
            .where(PipelineStage.pipeline_id == pipeline.id)
            .order_by(PipelineStage.position)
            .execution_options(populate_existing=True)
        )
    )
    job_ids = [s.job_id for s in stages if s.job_id]
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))} if job_ids else {}
    created: list[str] = []
    reason = None
    if pipeline.status == "running":
        stopped = next((s for s in stages if s.job_id and jobs[s.job_id].status in ("failed", "cancelled")), None)
        if stopped is not None:
            reason = _stop(pipeline, stopped, jobs[stopped.job_id or ""])
        else:
            created = _start_ready(session, pipeline, stages, jobs, settings)
    if pipeline.status != "running":
        default = "the pipeline was cancelled" if pipeline.status in ("cancelling", "cancelled") else None
        _wind_down(session, pipeline, stages, jobs, reason or default or pipeline.error_message or "")
    if pipeline.status in FINAL_PIPELINE_STATUSES and pipeline.finished_at is None:
        pipeline.finished_at = utcnow()
    return created


def _start_ready(
    session: Session, pipeline: Pipeline, stages: list[PipelineStage], jobs: dict[str, Job], settings: Settings | None
) -> list[str]:
    """Create the jobs of the pending stages whose inputs all succeeded; settle a finished pipeline."""
    by_name = {s.name: s for s in stages}

    def succeeded(name: str) -> bool:
        job_id = by_name[name].job_id
        return job_id is not None and jobs[job_id].status == "succeeded"

    created: list[str] = []
    for stage in stages:
        if stage.job_id is not None or stage.skipped_reason is not None:
            continue
        if not all(succeeded(name) for name in stage.depends_on):
            continue
        models = {name: f"job:{by_name[name].job_id}" for name in stage.depends_on}
        try:
            job = build_stage_job(session, settings or settings_of(session), pipeline, stage, models)
        except InvalidRequest as exc:  # e.g. its dataset was deleted since the pipeline was created
            reason = f"stage {stage.name!r} could not start: {exc.message}"
            stage.skipped_reason = reason
            _fail(pipeline, "stage_not_started", reason)
            return created
        lifecycle.submit(session, job)
        stage.job_id = job.id
        jobs[job.id] = job
        created.append(job.id)
        log.info("pipeline %s: stage %s started as job %s", pipeline.id, stage.name, job.id)
    if stages and all(s.job_id and jobs[s.job_id].status == "succeeded" for s in stages):
        pipeline.status = "succeeded"
        pipeline.output_checkpoint_id = jobs[stages[-1].job_id or ""].output_checkpoint_id
    return created


def build_stage_job(
    session: Session, settings: Settings, pipeline: Pipeline, stage: PipelineStage, models: Mapping[str, str]
) -> Job:
    """A stage's job row (not yet submitted), its `stage:` references replaced by `models`, checked as
    POST /v1/jobs checks a request (raises InvalidRequest)."""
    from api.jobs.service import prepare_job  # the jobs service imports nothing of pipelines; keep it so

    try:  # stored by an earlier version of the service, it may no longer be a valid request
        request = JobCreate.model_validate(stage.request)
    except ValidationError as exc:
        raise invalid_from_pydantic(exc) from exc
    body = named(with_refs(request, models), pipeline, stage.name)
    return prepare_job(session, settings, pipeline.tenant_id, body)


def named(body: JobCreate, pipeline: Pipeline, stage_name: str) -> JobCreate:
    """A stage's job is called `<pipeline>/<stage>` unless its request names it."""
    if body.name is not None:
        return body
    return body.model_copy(update={"name": f"{pipeline.name or pipeline.id}/{stage_name}"[:300]})


def _stop(pipeline: Pipeline, stage: PipelineStage, job: Job) -> str:
    """The pipeline after a stage's job failed or was cancelled; returns why the rest will not run."""
    if job.status == "failed":
        detail = job.error_message or job.error_code or "no reason given"
        _fail(pipeline, "stage_failed", f"stage {stage.name!r} failed: {detail}")
        return f"stage {stage.name!r} failed"
    pipeline.status = "cancelled"
    return f"stage {stage.name!r} was cancelled"


def _fail(pipeline: Pipeline, code: str, message: str) -> None:
    pipeline.status, pipeline.error_code, pipeline.error_message = "failed", code, message


def _wind_down(
    session: Session, pipeline: Pipeline, stages: list[PipelineStage], jobs: dict[str, Job], reason: str
) -> None:
    """A pipeline that stops: skip the stages not started, cancel the live ones (never a succeeded
    pipeline's: it has none)."""
    for stage in stages:
        if stage.job_id is None and stage.skipped_reason is None:
            stage.skipped_reason = reason
    live = [job_id for job_id in sorted(jobs) if jobs[job_id].status in LIVE_STATUSES]
    if live:
        locked = session.scalars(
            select(Job)
            .where(Job.id.in_(live))
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        ).all()
        for job in locked:
            if job.status in LIVE_STATUSES:
                lifecycle.request_cancel(session, job, reason=reason)
    if pipeline.status == "cancelling" and not any(jobs[s.job_id].status in LIVE_STATUSES for s in stages if s.job_id):
        pipeline.status = "cancelled"


def repair(session: Session, settings: Settings) -> list[str]:
    """Advance every pipeline that is not settled: live ones, and stopped ones with a live stage.
    The reaper's pass; the caller commits and sends the returned new job ids."""
    live_stage = (
        select(PipelineStage.pipeline_id).join(Job, Job.id == PipelineStage.job_id).where(Job.status.in_(LIVE_STATUSES))
    )
    ids = session.scalars(
        select(Pipeline.id).where(
            Pipeline.status.in_(LIVE_PIPELINE_STATUSES)
            | (Pipeline.status.in_(("failed", "cancelled")) & Pipeline.id.in_(live_stage))
        )
    ).all()
    created: list[str] = []
    for pipeline_id in ids:
        created += advance(session, pipeline_id, settings, skip_locked=True)
    return created


def unsent_jobs(session: Session, job_id: str) -> list[str]:
    """Queued, never-sent jobs of the pipeline that job `job_id` is a stage of (those its end created)."""
    pipeline_id = select(PipelineStage.pipeline_id).where(PipelineStage.job_id == job_id).scalar_subquery()
    return list(
        session.scalars(
            select(Job.id)
            .join(PipelineStage, PipelineStage.job_id == Job.id)
            .where(PipelineStage.pipeline_id == pipeline_id, Job.status == "queued", Job.enqueued_at.is_(None))
        )
    )
