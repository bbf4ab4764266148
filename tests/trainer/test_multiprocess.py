"""DPO, reward and SFT under `accelerate launch --num_processes 2 --cpu` (gloo): the losses of one process,
checkpoints written once, and a two-process resume that continues the uninterrupted run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import ROOT, Result, read_events
from tests.trainer.test_algorithms import base_spec

RUNS = {"dpo": "pref.jsonl", "reward": "pref_standard.jsonl", "sft": "sft.jsonl"}


def launch(tmp: Path, spec: dict[str, Any], output: str, processes: int, resume: Path | None = None) -> Result:
    """`python -m trainer run` in `processes` CPU processes under accelerate launch (plain python for 1)."""
    spec_path, out, events = tmp / f"{output}.json", tmp / output, tmp / f"{output}.events.jsonl"
    spec_path.write_text(json.dumps(spec))
    args = ["run", str(spec_path), "--output", str(out), "--events", str(events)]
    args += ["--resume", str(resume)] if resume is not None else []
    if processes == 1:
        cmd = [sys.executable, "-m", "trainer", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes), "--cpu"]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--module", "trainer"]
        cmd += args
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    return Result(proc.returncode, read_events(events), out, proc.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", list(RUNS))
def test_two_processes_train_like_one_save_once_and_resume(
    tmp_path: Path, tiny_model: Path, data_dir: Path, algorithm: str
) -> None:
    spec = base_spec(
        tiny_model,
        data_dir,
        algorithm,
        RUNS[algorithm],
        batch_size=4,
        micro_batch_size=1,  # two micro-batches per process: gradients accumulate, then synchronise
        max_steps=4,
        save_every=2,
        lr_scheduler="constant",
        padding_free=True,  # the packed path; the padded one differs only in trainer.packing.collate
    )
    one = launch(tmp_path, spec, "one", 1)
    two = launch(tmp_path, spec, "two", 2)
    assert one.code == 0, one.stderr[-3000:]
    assert two.code == 0, two.stderr[-3000:]
    assert sorted(two.losses()) == [1, 2, 3, 4]
    assert two.losses() == pytest.approx(one.losses(), rel=1e-4, abs=1e-6)

    # Only the main process writes events and checkpoints: each step's progress once, each checkpoint once.
    assert [e["step"] for e in two.of_type("progress")] == [1, 2, 3, 4]
    assert [(e["kind"], e["step"]) for e in two.of_type("checkpoint")] == [("intermediate", 2), ("final", 4)]
    assert sorted(p.name for p in (two.output / "checkpoints").iterdir()) == ["step-00000002"]
    assert two.events[-1] == {"type": "done"}

    resumed = launch(tmp_path, spec, "resumed", 2, resume=two.output / "checkpoints" / "step-00000002")
    assert resumed.code == 0, resumed.stderr[-3000:]
    assert resumed.losses() == pytest.approx({s: v for s, v in two.losses().items() if s > 2}, rel=1e-4, abs=1e-6)
