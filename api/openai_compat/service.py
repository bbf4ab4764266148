"""OpenAI's fine-tuning API as views of alignd's rows: files are datasets, fine-tuning jobs are jobs.

Nothing is stored twice. A fine-tuning job is created by translating the request into a `JobCreate`
and handing it to api.jobs.service.create_job (so every check of a native job applies, and its
errors come back with OpenAI's parameter names); reading one renders the job row as OpenAI's object.
Status changes go through the job life cycle as for native jobs (cancel, pause and resume are
api.jobs.service's).
"""

from __future__ import annotations

import math
import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.errors import AlignError, InvalidRequest
from api.core.pagination import fetch_page
from api.core.settings import Settings
from api.datasets.models import Dataset
from api.jobs import service as jobs
from api.jobs.models import Job, JobEvent
from api.jobs.schemas import JobCreate
from api.openai_compat import graders
from api.openai_compat.errors import Unsupported
from api.openai_compat.schemas import (
    CheckpointMetrics,
    DpoHyperparametersOut,
    DpoMethodOut,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobCreate,
    FineTuningJobEvent,
    Hyperparameters,
    JobError,
    MethodOut,
    ReinforcementHyperparameters,
    ReinforcementHyperparametersOut,
    ReinforcementMethodOut,
    SupervisedHyperparameters,
    SupervisedMethodOut,
)
from trainer.config import HYPERPARAMETERS, Algorithm

METHOD_ALGORITHM: dict[str, Algorithm] = {"supervised": "sft", "dpo": "dpo", "reinforcement": "grpo"}
ALGORITHM_METHOD: dict[str, str] = {v: k for k, v in METHOD_ALGORITHM.items()}
STATUS = {
    "queued": "queued",
    "running": "running",
    "cancelling": "cancelled",  # OpenAI's cancel answers "cancelled"; the worker is stopping the trainer
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    # OpenAI has no "pausing": the trainer runs on to its next step boundary, so the job shows as
    # running until it is saved and paused (a client that sees "paused" can resume at once).
    "pausing": "running",
    "paused": "paused",
}
OURS = {"n_epochs": "num_epochs", "batch_size": "batch_size", "beta": "beta", "eval_interval": "eval_every"}
THEIRS = {v: k for k, v in OURS.items()} | {"learning_rate": "learning_rate_multiplier"}


class NoOpenAIView(InvalidRequest):
    status_code = 404
    code = "not_found"


def timestamp(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


# ---- files ---------------------------------------------------------------------------------------


def file_object(dataset: Dataset) -> FileObject:
    return FileObject(
        id=dataset.id, bytes=dataset.bytes, created_at=timestamp(dataset.created_at) or 0, filename=dataset.name
    )


def check_purpose(purpose: str | None) -> None:
    if purpose != "fine-tune":
        raise Unsupported(
            f"purpose {purpose!r} is not supported: alignd stores fine-tuning data only (purpose 'fine-tune')"
            if purpose
            else "purpose is required: send purpose=fine-tune",
            param="purpose",
        )


# ---- creating a job ------------------------------------------------------------------------------


def create_job(session: Session, settings: Settings, tenant_id: str, body: FineTuningJobCreate) -> Job:
    """Translate an OpenAI create request into a native job and create it (errors name OpenAI's params)."""
    method, given, prefix = _method(body)
    algorithm = METHOD_ALGORITHM[method]
    hyperparameters = _hyperparameters(algorithm, given, prefix)
    reward: list[dict[str, Any]] | None = None
    reward_params: list[str] = []
    if method == "reinforcement":
        assert body.method is not None and body.method.reinforcement is not None
        reward, reward_params = graders.components_for(body.method.reinforcement.grader, "method.reinforcement.grader")
    if body.integrations:
        raise Unsupported(
            "integrations are not supported: alignd sends metrics to no third party", param="integrations"
        )
    try:
        components = jobs.parse_components(reward, "reward") if reward is not None else None
        native = JobCreate(
            algorithm=algorithm,
            base_model=body.model,
            dataset_id=body.training_file,
            eval_dataset_id=body.validation_file,
            reward=components,
            hyperparameters=hyperparameters,
            lora=None,
            seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
            name=body.suffix,
            metadata=body.metadata,
        )
        job, _ = jobs.create_job(session, settings, tenant_id, native, None)
    except AlignError as exc:
        _rename(exc, prefix, reward_params)
        raise
    return job


def _method(body: FineTuningJobCreate) -> tuple[str, SupervisedHyperparameters | None, str]:
    """(method type, its hyperparameters, their param path) of a request."""
    if body.method is None:
        return "supervised", body.hyperparameters, "hyperparameters"
    kind = body.method.type
    for other in ("supervised", "dpo", "reinforcement"):
        if other != kind and getattr(body.method, other) is not None:
            raise InvalidRequest(f"method.{other} given for method type {kind!r}", param=f"method.{other}")
    settings = getattr(body.method, kind)
    if kind == "reinforcement" and settings is None:
        raise InvalidRequest("method reinforcement needs method.reinforcement.grader", param="method.reinforcement")
    given = settings.hyperparameters if settings is not None else None
    if body.hyperparameters is not None:
        if kind != "supervised" or given is not None:
            raise InvalidRequest(
                f"give the hyperparameters as method.{kind}.hyperparameters, not at the top level",
                param="hyperparameters",
            )
        given = body.hyperparameters
    return kind, given, f"method.{kind}.hyperparameters" if body.hyperparameters is None else "hyperparameters"


def _hyperparameters(algorithm: str, given: SupervisedHyperparameters | None, prefix: str) -> dict[str, Any]:
    """OpenAI's hyperparameters as ours; "auto" and absent mean our algorithm's default."""
    if given is None:
        return {}
    out: dict[str, Any] = {}
    for theirs, value in given.model_dump(exclude_none=True).items():
        if value == "auto" or (theirs == "reasoning_effort" and value == "default"):
            continue
        if theirs == "learning_rate_multiplier":
            default = HYPERPARAMETERS[algorithm].model_fields["learning_rate"].default
            out["learning_rate"] = float(f"{value * default:.12g}")
        elif theirs in OURS:
            out[OURS[theirs]] = value
        else:  # compute_multiplier, eval_samples, reasoning_effort
            assert isinstance(given, ReinforcementHyperparameters)
            raise Unsupported(
                f"{theirs} {value!r} is not supported: only 'auto'"
                + (" (or 'default')" if theirs == "reasoning_effort" else "")
                + "; alignd's grpo sets num_generations, max_new_tokens, temperature through POST /v1/jobs",
                param=f"{prefix}.{theirs}",
            )
    return out


def _rename(exc: AlignError, prefix: str, reward_params: list[str]) -> None:
    """Name OpenAI's parameter in an error of the native job service."""
    param = exc.param
    if param is None:
        return
    renamed = param
    if param == "base_model":
        renamed = "model"
    elif param == "dataset_id":
        renamed = "training_file"
    elif param == "eval_dataset_id":
        renamed = "validation_file"
    elif param.startswith("hyperparameters."):
        field = param.removeprefix("hyperparameters.")
        renamed = f"{prefix}.{THEIRS.get(field, field)}"
    elif param.startswith("reward[") and reward_params:
        index = int(param[len("reward[") : param.index("]")])
        renamed = reward_params[min(index, len(reward_params) - 1)]
    elif param == "reward":
        renamed = "method.reinforcement.grader"
    if renamed != param:
        exc.param = renamed
        exc.message = exc.message.replace(param, renamed)
        for detail in exc.details:
            if isinstance(detail, dict) and detail.get("field") == param:
                detail["field"] = renamed


# ---- reading jobs --------------------------------------------------------------------------------


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    job = jobs.get_job(session, tenant_id, job_id)
    if job.algorithm not in ALGORITHM_METHOD:
        raise NoOpenAIView(
            f"job {job_id} is a {job.algorithm} job, which has no OpenAI fine-tuning method; see GET /v1/jobs/{job_id}",
            param="fine_tuning_job_id",
        )
    return job


def list_jobs(
    session: Session, tenant_id: str, *, limit: int, after: str | None, metadata: dict[str, str]
) -> tuple[list[Job], bool]:
    query = select(Job).where(Job.tenant_id == tenant_id, Job.algorithm.in_(list(ALGORITHM_METHOD)))
    for key, value in metadata.items():
        query = query.where(Job.job_metadata[key].as_string() == value)
    return fetch_page(session, Job, tenant_id, query, after, limit)


def job_view(job: Job) -> FineTuningJob:
    """The OpenAI `fine_tuning.job` object of a job row."""
    method = ALGORITHM_METHOD[job.algorithm]
    hp = job.hyperparameters or {}
    common = _common_hyperparameters(job.algorithm, hp)
    out = MethodOut(type=method)
    if method == "supervised":
        out.supervised = SupervisedMethodOut(hyperparameters=common)
    elif method == "dpo":
        out.dpo = DpoMethodOut(hyperparameters=DpoHyperparametersOut(**common.model_dump(), beta=hp.get("beta")))
    else:
        out.reinforcement = ReinforcementMethodOut(
            grader=graders.grader_view(job.reward, job.reward_model_id),
            hyperparameters=ReinforcementHyperparametersOut(
                **common.model_dump(), eval_interval=hp.get("eval_every") or "auto"
            ),
        )
    progress = job.progress or {}
    eta = progress.get("eta_seconds")
    estimated = None
    if job.status == "running" and isinstance(eta, int | float) and math.isfinite(eta):
        estimated = int(datetime.now(UTC).timestamp() + eta)
    succeeded = job.status == "succeeded" and job.output_checkpoint_id is not None
    return FineTuningJob(
        id=job.id,
        created_at=timestamp(job.created_at) or 0,
        error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
        fine_tuned_model=f"job:{job.id}" if succeeded else None,
        finished_at=timestamp(job.finished_at),
        hyperparameters=common,
        model=job.base_model,
        organization_id=job.tenant_id,
        result_files=[],
        seed=job.seed,
        status=STATUS.get(job.status, job.status),
        training_file=job.dataset_id,
        validation_file=job.eval_dataset_id,
        estimated_finish=estimated,
        metadata=job.job_metadata,
        method=out,
    )


def _common_hyperparameters(algorithm: str, hp: dict[str, Any]) -> Hyperparameters:
    default = HYPERPARAMETERS[algorithm].model_fields["learning_rate"].default
    lr = hp.get("learning_rate", default)
    epochs = hp.get("num_epochs")
    if isinstance(epochs, float) and epochs.is_integer():
        epochs = int(epochs)
    return Hyperparameters(
        batch_size=hp.get("batch_size"),
        learning_rate_multiplier=float(f"{lr / default:.12g}") if isinstance(lr, int | float) else None,
        n_epochs=epochs,
    )


def cancel_job(session: Session, tenant_id: str, job_id: str) -> Job:
    get_job(session, tenant_id, job_id)
    return jobs.cancel_job(session, tenant_id, job_id)


def pause_job(session: Session, tenant_id: str, job_id: str) -> Job:
    get_job(session, tenant_id, job_id)
    return jobs.pause_job(session, tenant_id, job_id)


def resume_job(session: Session, tenant_id: str, job_id: str) -> Job:
    get_job(session, tenant_id, job_id)
    return jobs.resume_job(session, tenant_id, job_id)


# ---- events and checkpoints ----------------------------------------------------------------------


def event_id(job_id: str, seq: int) -> str:
    return f"ftevent-{job_id}-{seq}"


def _event_seq(job_id: str, after: str) -> int:
    prefix = f"ftevent-{job_id}-"
    tail = after.removeprefix(prefix)
    if tail == after or not tail.isdigit():
        raise InvalidRequest("invalid cursor: pass the id of an event of this job", param="after")
    return int(tail)


def list_events(session: Session, job: Job, *, after: str | None, limit: int) -> tuple[list[FineTuningJobEvent], bool]:
    """Newest first, as OpenAI lists them; `after` is the id of the last event of the previous page."""
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    if after is not None:
        query = query.where(JobEvent.seq < _event_seq(job.id, after))
    rows = list(session.scalars(query.order_by(JobEvent.seq.desc()).limit(limit + 1)))
    return [event_view(job, e) for e in rows[:limit]], len(rows) > limit


def event_view(job: Job, event: JobEvent) -> FineTuningJobEvent:
    data = event.data or {}
    level, kind, message, payload = "info", "message", "", data
    if event.type == "status":
        status = data.get("status")
        error = data.get("error") or {}
        message = {
            "queued": "Job queued",
            "running": f"Job started (attempt {data.get('attempt', 1)})",
            "succeeded": "The job has successfully completed",
            "cancelling": "Job cancellation requested",
            "cancelled": "Job cancelled",
            "pausing": "Job pause requested",
            "paused": "Job paused",
        }.get(str(status), f"Job {status}")
        if status == "failed":
            level, message = "error", f"Job failed: {error.get('message') or data.get('reason') or 'see the job error'}"
        elif status == "queued" and data.get("previous") == "paused":
            message = "Job resumed"
        elif status == "queued" and data.get("previous") == "running":
            level, message = "warn", f"Job requeued: {data.get('reason', 'the worker was lost')}"
    elif event.type == "metrics":
        kind = "metrics"
        values: dict[str, Any] = data["values"] if isinstance(data.get("values"), dict) else {}
        step = data.get("step")
        total = (job.progress or {}).get("total_steps")
        payload = {"step": step, "total_steps": total, **values}
        if "loss" in values:
            payload["train_loss"] = values["loss"]
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(values.items())[:6])
        message = f"Step {step}" + (f"/{total}" if total else "") + (f": {shown}" if shown else "")
    elif event.type == "checkpoint":
        message = f"Checkpoint created at step {data.get('step')}"
    elif event.type == "log":
        level = {"warning": "warn", "warn": "warn", "error": "error", "critical": "error"}.get(
            str(data.get("level", "info")).lower(), "info"
        )
        message = str(data.get("message", ""))
    elif event.type == "sample":
        message = f"Sample at step {data.get('step')}" + (
            f": reward {data['reward']:.4g}" if isinstance(data.get("reward"), int | float) else ""
        )
    return FineTuningJobEvent(
        id=event_id(job.id, event.seq),
        created_at=timestamp(event.created_at) or 0,
        level=level,
        message=message,
        data=payload,
        type=kind,
    )


def list_checkpoints(
    session: Session, job: Job, *, after: str | None, limit: int
) -> tuple[list[FineTuningJobCheckpoint], bool]:
    """Newest (highest step) first; `after` is the id of the last checkpoint of the previous page."""
    rows = list(
        session.scalars(
            select(Checkpoint)
            .where(Checkpoint.job_id == job.id)
            .order_by(Checkpoint.step.desc(), Checkpoint.kind, Checkpoint.id)
        )
    )
    if after is not None:
        ids = [c.id for c in rows]
        if after not in ids:
            raise InvalidRequest("invalid cursor: pass the id of a checkpoint of this job", param="after")
        rows = rows[ids.index(after) + 1 :]
    return [checkpoint_view(c) for c in rows[:limit]], len(rows) > limit


def checkpoint_view(checkpoint: Checkpoint) -> FineTuningJobCheckpoint:
    metrics = checkpoint.metrics or {}

    def number(key: str) -> float | None:
        value = metrics.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return FineTuningJobCheckpoint(
        id=checkpoint.id,
        created_at=timestamp(checkpoint.created_at) or 0,
        fine_tuned_model_checkpoint=f"checkpoint:{checkpoint.id}",
        fine_tuning_job_id=checkpoint.job_id,
        metrics=CheckpointMetrics(
            step=float(checkpoint.step),
            train_loss=number("loss"),
            train_mean_token_accuracy=number("mean_token_accuracy"),
            valid_loss=number("eval/loss"),
            valid_mean_token_accuracy=number("eval/mean_token_accuracy"),
        ),
        step_number=checkpoint.step,
    )
