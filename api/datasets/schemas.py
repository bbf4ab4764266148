"""Public shapes of datasets (the ORM row's storage key never leaves the server)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

DatasetKind = Literal["preference", "prompt", "sft"]


class DatasetPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    kind: DatasetKind
    """preference (dpo, reward), prompt (grpo, ppo) or sft."""
    format: str
    """The row format detected (or declared): standard, conversational, implicit_prompt, openai_dpo,
    sharegpt_preference, alpaca_preference, prompt, prompt_completion, messages, alpaca, sharegpt or text."""
    rows: int
    bytes: int
    """Size of the file as uploaded (compressed size for .jsonl.gz; the rows are stored decompressed)."""
    sha256: str
    """sha256 of the file as uploaded."""
    created_at: datetime


class DatasetValidation(BaseModel):
    """Result of a pre-flight validation (nothing is stored)."""

    valid: Literal[True] = True
    kind: DatasetKind
    format: str
    rows: int
    bytes: int
    sha256: str


class DatasetRows(BaseModel):
    data: list[Any]
    """The rows as uploaded (JSON objects), blank lines skipped."""
    offset: int
    has_more: bool


class DatasetExamples(BaseModel):
    data: list[dict[str, Any]]
    """The rows as the trainer reads them (`trainer.formats.parse_row` with the dataset's format): preference
    rows as {prompt, chosen, rejected, margin}, prompt rows as {prompt, columns}, SFT rows as {prompt,
    completion}; each text a string or a list of {role, content} messages. The model's chat template is
    not applied here; GET /v1/datasets/{id}/preview?model= renders rows with it."""
    offset: int
    has_more: bool


class RowProblem(BaseModel):
    field: str | None
    message: str


class RenderedRow(BaseModel):
    """One row as the trainer tokenises it for a model; `error` alone when the trainer would refuse the row."""

    prompt: str | None = None
    """The prompt text: conversations through the model's chat template with the generation prompt, plain
    strings as they are."""
    chosen: str | None = None
    """Preference rows: the chosen completion's text as it follows the prompt (what the template adds)."""
    rejected: str | None = None
    completion: str | None = None
    """SFT rows: the completion's text as it follows the prompt."""
    templated: bool | None = None
    """Whether the model's chat template rendered the row (False: plain text, or "role: content" lines for a
    model without a template)."""
    tokens: dict[str, int] | None = None
    """Token counts per text (prompt with the special tokens the trainer adds, completions with EOS)."""
    total_tokens: int | None = None
    """Prompt plus the longest completion: the row's length before truncation."""
    prompt_truncated: bool | None = None
    """The prompt is longer than max_prompt_length: the trainer cuts it from the left."""
    completion_truncated: bool | None = None
    """A completion does not fit max_length after the prompt: the trainer cuts its end off."""
    error: RowProblem | None = None


class DatasetPreview(BaseModel):
    model: str
    """The MODEL_REF whose tokenizer and chat template rendered the rows."""
    max_length: int
    max_prompt_length: int
    data: list[RenderedRow]
    offset: int
    has_more: bool
