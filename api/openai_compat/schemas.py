"""OpenAI's fine-tuning shapes: requests as OpenAI documents them, responses field for field as the
openai SDK declares them (openai/types/file_object.py, openai/types/fine_tuning/*.py).

Requests refuse unknown fields (400 naming them); integers are strict and bounded. Graders stay
plain objects here: api.openai_compat.graders reads them, so that one we cannot honour is refused
by its name rather than by a schema mismatch.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StringConstraints

T = TypeVar("T")

Auto = Literal["auto"]


def _auto_or_number(integer: bool, low: float, high: float, *, above: bool = False) -> PlainValidator:
    """Accept "auto" or a number in [low, high] (low excluded when `above`), with one plain error message (no
    union branches in the error's location, so `param` is the field itself)."""
    kind = "an integer" if integer else "a number"
    bound = f"{'above' if above else 'from'} {low:g} {'up ' if above else ''}to {high:g}"

    def check(value: Any) -> Any:
        if value == "auto":
            return value
        number = isinstance(value, int) if integer else isinstance(value, int | float) and math.isfinite(value)
        if isinstance(value, bool) or not number or value > high or value < low or (above and value == low):
            raise ValueError(f"must be 'auto' or {kind} {bound}")
        return value if integer else float(value)

    return PlainValidator(check, json_schema_input_type=Literal["auto"] | (int if integer else float))


BatchSize = Annotated[Auto | int, _auto_or_number(True, 1, 8192)]
Epochs = Annotated[Auto | int, _auto_or_number(True, 1, 100)]
Multiplier = Annotated[Auto | float, _auto_or_number(False, 0, 10000, above=True)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=16)]
"""At most 16 string pairs; keys up to 64 characters, values up to 512 (as OpenAI's)."""


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- requests ------------------------------------------------------------------------------------


class SupervisedHyperparameters(_Request):
    batch_size: BatchSize | None = None
    """Examples per optimizer step -> our batch_size ("auto": the algorithm's default)."""
    learning_rate_multiplier: Multiplier | None = None
    """-> learning_rate = multiplier x the algorithm's default learning rate ("auto": 1)."""
    n_epochs: Epochs | None = None
    """-> num_epochs ("auto": the algorithm's default, 1)."""


class DpoHyperparameters(SupervisedHyperparameters):
    beta: Annotated[Auto | float, _auto_or_number(False, 0, 100, above=True)] | None = None
    """-> our DPO beta ("auto": 0.1)."""


class ReinforcementHyperparameters(SupervisedHyperparameters):
    compute_multiplier: Annotated[Auto | float, _auto_or_number(False, 0, 1e6, above=True)] | None = None
    """Only "auto" (alignd samples num_generations completions per prompt, default 8)."""
    eval_interval: Annotated[Auto | int, _auto_or_number(True, 1, 1_000_000)] | None = None
    """Steps between evaluations on the validation file (alignd's eval_every); "auto": only at the end."""
    eval_samples: Annotated[Auto | int, _auto_or_number(True, 1, 1_000_000)] | None = None
    """Only "auto" (an evaluation scores one completion per validation prompt)."""
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None
    """Only "default" (alignd trains any causal LM; there is no reasoning-effort switch)."""


class SupervisedMethodIn(_Request):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethodIn(_Request):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethodIn(_Request):
    grader: dict[str, Any]
    """string_check, score_model or multi (weighted sums of those); see api/README.md."""
    hyperparameters: ReinforcementHyperparameters | None = None


class MethodIn(_Request):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethodIn | None = None
    dpo: DpoMethodIn | None = None
    reinforcement: ReinforcementMethodIn | None = None


class FineTuningJobCreate(_Request):
    model: str = Field(min_length=1, max_length=500)
    """A MODEL_REF: a name from GET /v1/models, a hub id, job:<id> (a fine_tuned_model) or checkpoint:<id>."""
    training_file: str = Field(min_length=1, max_length=40)
    validation_file: str | None = Field(None, max_length=40)
    method: MethodIn | None = None
    hyperparameters: SupervisedHyperparameters | None = None
    """Deprecated by OpenAI in favour of method; means method supervised."""
    suffix: str | None = Field(None, min_length=1, max_length=64)
    """Kept as the job's name."""
    seed: Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)] | None = None
    metadata: Metadata | None = None
    integrations: list[dict[str, Any]] | None = None
    """Refused unless empty: alignd sends metrics to no third party."""


# ---- responses -----------------------------------------------------------------------------------


class FileObject(BaseModel):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: Literal["fine-tune"] = "fine-tune"
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(BaseModel):
    id: str
    deleted: bool = True
    object: Literal["file"] = "file"


class ListPage(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    batch_size: Auto | int | None = None
    learning_rate_multiplier: Auto | float | None = None
    n_epochs: Auto | int | float | None = None


class DpoHyperparametersOut(Hyperparameters):
    beta: Auto | float | None = None


class ReinforcementHyperparametersOut(Hyperparameters):
    compute_multiplier: Auto | float | None = None
    eval_interval: Auto | int | None = None
    eval_samples: Auto | int | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None


class SupervisedMethodOut(BaseModel):
    hyperparameters: Hyperparameters | None = None


class DpoMethodOut(BaseModel):
    hyperparameters: DpoHyperparametersOut | None = None


class ReinforcementMethodOut(BaseModel):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparametersOut | None = None


class MethodOut(BaseModel):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: SupervisedMethodOut | None = None
    dpo: DpoMethodOut | None = None
    reinforcement: ReinforcementMethodOut | None = None


OpenAIStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]


class FineTuningJob(BaseModel):
    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    """job:<id> once the job succeeded: a MODEL_REF for later jobs; its checkpoint downloads from
    GET /v1/checkpoints/{id}/download."""
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str]
    seed: int
    status: OpenAIStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[dict[str, Any]] | None = None
    metadata: dict[str, str] | None = None
    method: MethodOut


class FineTuningJobEvent(BaseModel):
    id: str
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None
    type: Literal["message", "metrics"] = "message"


class CheckpointMetrics(BaseModel):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(BaseModel):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    """checkpoint:<id>: a MODEL_REF, and GET /v1/checkpoints/{id}/download gives its files."""
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int
