"""Shared helpers for the GRPO/PPO tests: tiny prompt data, specs, and running the trainer CLI."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from tests.shared_data import shared_data
from trainer.cli import main
from trainer.formats import iter_rows

GSM8K = shared_data("gsm8k-train.jsonl")


def gsm8k_prompts(path: Path, rows: int, conversational: bool = False, shortest_of: int | None = None) -> Path:
    """The first `rows` GSM8K rows as a prompt dataset ({"question","answer"}, or chat prompts).

    With `shortest_of`, the `rows` shortest questions among the first `shortest_of` rows (cheaper on CPU).
    """
    picked = [row for _, row in itertools.islice(iter_rows(str(GSM8K)), shortest_of or rows)]
    if shortest_of:
        picked = sorted(picked, key=lambda row: len(row["question"]))[:rows]
    with path.open("w") as fh:
        for row in picked:
            if conversational:
                row = {"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"]}
            fh.write(json.dumps(row) + "\n")
    return path


def run_trainer(
    tmp: Path, spec: dict[str, Any], name: str = "run", resume: Path | None = None
) -> tuple[int, list[dict[str, Any]], Path]:
    """Run `python -m trainer run` in-process; returns (exit code, events, output dir)."""
    spec_file = tmp / f"{name}.json"
    spec_file.write_text(json.dumps(spec))
    out, events = tmp / name, tmp / f"{name}.events.jsonl"
    argv = ["run", str(spec_file), "--output", str(out), "--events", str(events)]
    if resume is not None:
        argv += ["--resume", str(resume)]
    code = main(argv)
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    return code, lines, out


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]
