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
    applied later, by the trainer, and is not applied here."""
    offset: int
    has_more: bool
