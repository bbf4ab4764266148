from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class CheckpointPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    job_id: str
    step: int
    kind: Literal["intermediate", "final", "best"]
    """intermediate (resumable, every save_every steps), final (the end of the run), or best (the best
    hyperparameters.best_metric so far; the job's best_checkpoint_id is the newest)."""
    bytes: int
    """Size of the downloadable archive (a .tar of the Hugging Face folder)."""
    sha256: str
    """sha256 of the archive; also sent as X-Checkpoint-SHA256 by the download."""
    metrics: dict[str, Any] | None
    created_at: datetime
