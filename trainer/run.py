"""What does one invocation of `python -m trainer run` work with? The spec, its config, where things go.

`Run` is handed to an algorithm's `train(run)`; `TrainError` is the failure a user can act on, whose
`code` ends up in the `error` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.config import CommonConfig, TrainSpec
from trainer.events import Events

if TYPE_CHECKING:
    import torch
    from accelerate import Accelerator


class TrainError(Exception):
    """A failure the user can act on; `code` goes into the error event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class Run:
    """One invocation of `python -m trainer run`: the spec, its config and where things go."""

    spec: TrainSpec
    config: CommonConfig
    output: Path
    events: Events
    accelerator: Accelerator
    resume: Path | None = None
    data_report: dict[str, Any] = field(default_factory=dict)
    """Per split (train, eval): how tokenisation and truncation went; recorded in alignd.json."""

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def make_accelerator() -> Accelerator:
    """CPU when no GPU is visible; under `accelerate launch` one process per GPU."""
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())
