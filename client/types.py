"""The objects the API returns, as typed classes of the client's own (never imported from api/).

Unknown fields a newer server sends are kept (`extra="allow"`), so an older client keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
"""A job in one of these statuses changes no more."""


class APIObject(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Dataset(APIObject):
    id: str
    name: str
    kind: str
    """preference (dpo, reward), prompt (grpo, ppo) or sft."""
    format: str
    rows: int
    bytes: int
    sha256: str
    created_at: datetime


class DatasetValidation(APIObject):
    """What an upload would store (POST /v1/datasets/validate stores nothing)."""

    valid: bool
    kind: str
    format: str
    rows: int
    bytes: int
    sha256: str


class DatasetRows(APIObject):
    data: list[Any]
    offset: int
    has_more: bool


class RewardModel(APIObject):
    id: str
    name: str
    components: list[dict[str, Any]]
    created_at: datetime


class Scores(APIObject):
    scores: list[float]
    """Weighted total per completion."""
    components: dict[str, list[float]]
    """Each component's unweighted score per completion."""


class Progress(APIObject):
    step: int = 0
    total_steps: int | None = None
    epoch: float | None = None
    eta_seconds: float | None = None


class JobError(APIObject):
    code: str
    message: str


class Job(APIObject):
    id: str
    name: str | None = None
    algorithm: str
    status: str
    """queued, running, cancelling, succeeded, failed or cancelled (pausing/paused where the server has them)."""
    base_model: str
    dataset_id: str
    eval_dataset_id: str | None = None
    reward_model_id: str | None = None
    reward: list[dict[str, Any]] | None = None
    models: list[str] | None = None
    """evaluate: the candidates scored after base_model."""
    hyperparameters: dict[str, Any]
    lora: dict[str, Any] | None = None
    seed: int | None = None
    metadata: dict[str, Any] | None = None
    progress: Progress = Progress()
    metrics: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] | None = None
    """evaluate: each scored model's MODEL_REF -> its eval/... metrics."""
    attempt: int = 0
    error: JobError | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    output_checkpoint_id: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class PipelineStage(APIObject):
    name: str
    algorithm: str
    status: str
    """pending (waiting for its inputs), skipped (it will not run: see `reason`), or its job's status."""
    job_id: str | None = None
    depends_on: list[str] = []
    reason: str | None = None


class Pipeline(APIObject):
    id: str
    name: str | None = None
    status: str
    """running, cancelling, succeeded, failed or cancelled."""
    metadata: dict[str, Any] | None = None
    stages: list[PipelineStage]
    error: JobError | None = None
    output_checkpoint_id: str | None = None
    """The last stage's output checkpoint, once the pipeline succeeded."""
    created_at: datetime
    finished_at: datetime | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class Event(APIObject):
    seq: int
    created_at: datetime
    type: str
    """status, metrics, checkpoint, log or sample."""
    data: dict[str, Any]


class Metrics(APIObject):
    series: dict[str, list[tuple[int, float]]]
    """metric name -> [(step, value), ...] in step order."""


class Checkpoint(APIObject):
    id: str
    job_id: str
    step: int
    kind: Literal["intermediate", "final"] | str
    bytes: int
    sha256: str
    metrics: dict[str, Any] | None = None
    created_at: datetime


@dataclass(frozen=True)
class DownloadedCheckpoint:
    """A verified checkpoint archive on disk, and the folder it was extracted to (if asked)."""

    path: Path
    """The .tar archive."""
    sha256: str
    """Verified against X-Checkpoint-SHA256."""
    bytes: int
    extracted_to: Path | None = None
    """A Hugging Face folder: `from_pretrained(extracted_to)` (peft's for a LoRA adapter) loads it."""
