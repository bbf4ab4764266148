from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from api.core.validation import RequestModel, SafeStr
from trainer.config import RewardComponent


class RewardModelCreate(RequestModel):
    name: SafeStr = Field(min_length=1, max_length=300)
    components: list[RewardComponent] = Field(min_length=1)
    """Weighted components: {"type": "model", "model": MODEL_REF} or {"type": "rule", "rule": ...}."""


class RewardModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    components: list[dict[str, Any]]
    created_at: datetime


class ScoreRequest(RequestModel):
    prompt: str | list[dict[str, str]]
    """The prompt, as text or chat messages."""
    completions: list[str] = Field(min_length=1, max_length=256)
    fields: dict[str, Any] = Field(default_factory=dict)
    """Dataset columns the rules read (e.g. {"answer": "#### 42"})."""


class ScoreResponse(BaseModel):
    scores: list[float]
    """Weighted total per completion."""
    components: dict[str, list[float]]
    """Each component's unweighted score per completion."""
