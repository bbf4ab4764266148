"""How does the trainer say what it is doing? JSON-lines events (DESIGN §7).

One JSON object per line, flushed per line, to the --events file (stdout without one): `progress`,
`metrics`, `checkpoint`, `log`, `sample`, `done`, `error`. Only the main process writes them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Any

import torch


class Events:
    """JSON-lines event writer: one object per line, flushed per line."""

    def __init__(self, path: str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self._fh: IO[str] = open(path, "a", encoding="utf-8") if path and enabled else sys.stdout  # noqa: SIM115

    def emit(self, type_: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps({"type": type_, **fields}, default=jsonable) + "\n")
        self._fh.flush()

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def close(self) -> None:
        if self._fh is not sys.stdout:
            self._fh.close()


def jsonable(value: Any) -> Any:
    """`json.dumps` default for the values events and alignd.json carry: tensors and paths."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
