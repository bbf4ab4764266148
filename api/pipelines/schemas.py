"""Public shapes of pipelines: the request (named stages, each a job request whose inputs may say
`stage:<name>`) and the pipeline with its stages' statuses."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.core.validation import Metadata, RequestModel, SafeStr
from api.jobs.schemas import JobCreate, JobError, JobStatus

MAX_STAGES = 8
STAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

PipelineStatus = Literal["running", "cancelling", "succeeded", "failed", "cancelled"]
StageStatus = Literal["pending", "skipped"] | JobStatus


class StageCreate(RequestModel):
    name: SafeStr = Field(pattern=STAGE_NAME)
    """Unique in the pipeline; later stages refer to this stage's output as `stage:<name>`."""
    job: JobCreate
    """A job request as POST /v1/jobs takes it. `base_model: "stage:<name>"` trains on an earlier policy
    stage's output (sft, dpo, grpo, ppo); a reward component `{"type": "model", "model": "stage:<name>"}`
    scores with an earlier `reward` stage's output; an evaluate job's `models: ["stage:<name>", ...]` scores
    earlier training stages' outputs."""


class PipelineCreate(RequestModel):
    name: SafeStr | None = Field(None, max_length=300)
    metadata: Metadata | None = None
    """Free-form key/values kept with the pipeline (bounded as a job's metadata)."""
    stages: list[StageCreate] = Field(min_length=1, max_length=MAX_STAGES)
    """Stages in order: a stage may refer only to stages before it."""


class StagePublic(BaseModel):
    name: str
    algorithm: str
    status: StageStatus
    """pending (its inputs have not all succeeded yet), skipped (it will never run: see reason), or its
    job's status."""
    job_id: str | None
    depends_on: list[str]
    """The earlier stages whose outputs it reads."""
    reason: str | None
    """Why a skipped stage will not run."""


class PipelinePublic(BaseModel):
    id: str
    name: str | None
    status: PipelineStatus
    metadata: dict[str, Any] | None
    stages: list[StagePublic]
    error: JobError | None
    """Why a failed pipeline failed (which stage, and that stage's error)."""
    output_checkpoint_id: str | None
    """The last stage's output checkpoint, once the pipeline succeeded."""
    created_at: datetime
    finished_at: datetime | None

    @classmethod
    def of(cls, pipeline: Any) -> PipelinePublic:
        return cls(
            id=pipeline.id,
            name=pipeline.name,
            status=pipeline.status,
            metadata=pipeline.pipeline_metadata,
            stages=[
                StagePublic(
                    name=stage.name,
                    algorithm=stage.algorithm,
                    status=stage.job.status
                    if stage.job is not None
                    else "skipped"
                    if stage.skipped_reason
                    else "pending",
                    job_id=stage.job_id,
                    depends_on=stage.depends_on,
                    reason=stage.skipped_reason,
                )
                for stage in pipeline.stages
            ],
            error=JobError(code=pipeline.error_code, message=pipeline.error_message or "")
            if pipeline.error_code
            else None,
            output_checkpoint_id=pipeline.output_checkpoint_id,
            created_at=pipeline.created_at,
            finished_at=pipeline.finished_at,
        )


def _stage_status(stage: Any) -> str:
    if stage.job is not None:
        return str(stage.job.status)
    return "skipped" if stage.skipped_reason else "pending"
