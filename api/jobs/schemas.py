"""Public shapes of jobs and their events (worker ids, leases and idempotency keys stay inside)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from api.core.validation import Metadata, RequestModel, SafeStr
from trainer.config import JobAlgorithm, LoraConfig, RewardComponent

JobStatus = Literal["queued", "running", "cancelling", "pausing", "paused", "succeeded", "failed", "cancelled"]


TrackerName = Annotated[SafeStr, Field(min_length=1, max_length=128)]


class WandbSettings(RequestModel):
    project: TrackerName
    """W&B project the run is logged to."""
    name: TrackerName | None = None
    """Display name of the run; default: the job id."""
    entity: TrackerName | None = None
    """W&B team or user; default: the API key's default entity."""
    tags: list[Annotated[SafeStr, Field(min_length=1, max_length=64)]] = Field(default_factory=list, max_length=16)


class MlflowSettings(RequestModel):
    experiment: TrackerName
    """MLflow experiment name (created when missing)."""
    run_name: TrackerName | None = None
    """Name of the run; default: the job id."""
    tracking_uri: Annotated[SafeStr, Field(max_length=500, pattern=r"^https?://")] | None = None
    """An http(s) MLflow server; default: the server's ALIGND_MLFLOW_TRACKING_URI. Credentials are the
    worker's (MLFLOW_TRACKING_TOKEN, ...), never part of a job."""


class Integration(RequestModel):
    """One experiment tracker, as the hosted APIs take it: {"type": "wandb", "wandb": {...}}."""

    type: Literal["wandb", "mlflow"]
    wandb: WandbSettings | None = None
    mlflow: MlflowSettings | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> Integration:
        # One model rather than a discriminated union, so errors name `integrations[0].wandb.project`.
        if getattr(self, self.type) is None:
            raise ValueError(f'an integration of type "{self.type}" needs its settings under "{self.type}"')
        other = "mlflow" if self.type == "wandb" else "wandb"
        if getattr(self, other) is not None:
            raise ValueError(f'an integration of type "{self.type}" takes no "{other}" settings')
        return self


MAX_EVALUATED_MODELS = 8
"""Candidates an evaluate job scores besides its base model."""

ModelRef = Annotated[SafeStr, Field(min_length=1, max_length=500)]


class JobCreate(RequestModel):
    algorithm: JobAlgorithm
    """dpo, reward or sft (offline); grpo or ppo (online, need a reward); evaluate (scores models, trains nothing)."""
    base_model: SafeStr = Field(min_length=1, max_length=500)
    """MODEL_REF: a name from GET /v1/models, a hub id (org/name), job:<id> or checkpoint:<id>. For evaluate:
    the first model scored and the reference of the DPO implicit rewards."""
    models: list[ModelRef] | None = Field(None, max_length=MAX_EVALUATED_MODELS)
    """evaluate only: up to 8 more MODEL_REFs scored after base_model (job:<id>, checkpoint:<id>, model names)."""
    dataset_id: SafeStr = Field(max_length=100)
    """Training data; its kind must fit the algorithm (preference: dpo/reward, prompt: grpo/ppo, sft: sft;
    evaluate: preference pairs, or prompts with a reward)."""
    eval_dataset_id: SafeStr | None = Field(None, max_length=100)
    """Held-out data of the same kind, evaluated every eval_every steps and at the end (grpo and ppo generate
    for its prompts and score them with the reward); best_metric and early stopping need it."""
    reward_model_id: SafeStr | None = Field(None, max_length=100)
    """A reward-model spec (POST /v1/reward-models) for grpo/ppo, and for evaluate on a prompt dataset."""
    reward: list[RewardComponent] | None = None
    """Inline reward components for grpo/ppo (and evaluate on prompts), instead of reward_model_id."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Overrides of the algorithm's defaults (see the trainer's config classes); validated and filled in."""
    lora: LoraConfig | None = None
    """LoRA settings, or null for full fine-tuning."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    name: SafeStr | None = Field(None, max_length=300)
    metadata: Metadata | None = None
    """Free-form key/values kept with the job: at most 16 keys of up to 64 characters, string values of up
    to 512 characters."""
    integrations: list[Integration] | None = Field(None, max_length=4)
    """Experiment trackers the worker reports the job's metrics and checkpoints to, as the hosted APIs
    take them: [{"type": "wandb", "wandb": {"project": ...}}, {"type": "mlflow", "mlflow": {"experiment": ...}}]."""

    @field_validator("integrations")
    @classmethod
    def _one_of_each_type(cls, value: list[Any] | None) -> list[Any] | None:
        types = [i.type for i in value or []]
        if len(types) != len(set(types)):
            raise ValueError("at most one integration of each type")
        return value


class Progress(BaseModel):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    eta_seconds: float | None = None


class JobError(BaseModel):
    code: str
    message: str


class BestMetric(BaseModel):
    name: str
    """The eval metric, e.g. eval/loss or eval/reward."""
    mode: Literal["min", "max"]
    """min: lower is better; max: higher is better."""
    value: float
    step: int


class JobPublic(BaseModel):
    id: str
    name: str | None
    algorithm: str
    status: JobStatus
    base_model: str
    dataset_id: str
    eval_dataset_id: str | None
    reward_model_id: str | None
    reward: list[dict[str, Any]] | None
    models: list[str] | None
    """evaluate: the candidates scored after base_model."""
    hyperparameters: dict[str, Any]
    """With every default filled in."""
    lora: dict[str, Any] | None
    seed: int
    metadata: dict[str, Any] | None
    integrations: list[dict[str, Any]] | None
    progress: Progress
    metrics: dict[str, Any]
    """Latest value of each metric."""
    results: dict[str, dict[str, Any]] | None
    """evaluate: each scored model's MODEL_REF -> its eval/... metrics; null for training."""
    attempt: int
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    output_checkpoint_id: str | None
    best_checkpoint_id: str | None = None
    """The checkpoint (kind "best") with the best value of hyperparameters.best_metric so far; null
    without best_metric or before the first evaluation."""
    best_metric: BestMetric | None = None
    """Which metric picked best_checkpoint_id, its direction, its value there and that step."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        *("id", "name", "algorithm", "status", "base_model", "dataset_id", "eval_dataset_id", "reward_model_id"),
        *("reward", "models", "hyperparameters", "lora", "seed", "metadata", "integrations", "progress"),
        *("metrics", "results", "attempt", "error_code", "error_message", "created_at", "started_at"),
        *("finished_at", "output_checkpoint_id", "best_checkpoint_id", "best_metric"),
    )
    """The jobs table's columns `of` reads (service.read_job selects only these)."""

    @classmethod
    def of(cls, job: Any) -> JobPublic:
        """From a Job, or a row of COLUMNS with `metadata` labelled `job_metadata`."""
        return cls(
            id=job.id,
            name=job.name,
            algorithm=job.algorithm,
            status=job.status,
            base_model=job.base_model,
            dataset_id=job.dataset_id,
            eval_dataset_id=job.eval_dataset_id,
            reward_model_id=job.reward_model_id,
            reward=job.reward,
            models=job.models,
            hyperparameters=job.hyperparameters,
            lora=job.lora,
            seed=job.seed,
            metadata=job.job_metadata,
            integrations=job.integrations,
            progress=Progress.model_validate(job.progress or {}),
            metrics=job.metrics or {},
            results=job.results,
            attempt=job.attempt,
            error=JobError(code=job.error_code, message=job.error_message or "") if job.error_code else None,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            output_checkpoint_id=job.output_checkpoint_id,
            best_checkpoint_id=job.best_checkpoint_id,
            best_metric=BestMetric.model_validate(job.best_metric) if job.best_metric else None,
        )


class EventPublic(BaseModel):
    seq: int
    created_at: datetime
    type: Literal["status", "metrics", "checkpoint", "log", "sample"]
    data: dict[str, Any]


class EventPage(BaseModel):
    data: list[EventPublic]
    has_more: bool


class MetricsSeries(BaseModel):
    series: dict[str, list[tuple[int, float]]]
    """metric name -> [[step, value], ...] in step order."""
