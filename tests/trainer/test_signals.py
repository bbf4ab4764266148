"""SIGUSR1 saves at the next step boundary and stops (exit 75); --resume then continues the same losses.

The signalled run is a real `python -m trainer run` process, signalled while it trains, as the worker
does to pause a job or on its own warm shutdown (trainer/signals.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import ROOT, Result, make_spec, read_events
from trainer.signals import STOPPED_EXIT_CODE, clear_save_and_stop, request_save_and_stop

HYPER = {
    "learning_rate": 5e-3,
    "lr_scheduler": "cosine",
    "warmup_ratio": 0.2,
    "batch_size": 4,
    "micro_batch_size": 2,
    "max_steps": 16,
    "max_length": 64,
    "max_prompt_length": 48,
}


def dpo_spec(model: Path, data: Path) -> dict[str, Any]:
    # dropout in the LoRA adapter: the random generators must be restored too
    lora = {"r": 4, "alpha": 8, "dropout": 0.1}
    spec = {"algorithm": "dpo", "base_model": str(model), "train_file": str(data / "pref.jsonl"), "lora": lora}
    return spec | {"hyperparameters": {"disable_dropout": False}}


def grpo_spec(model: Path, data: Path) -> dict[str, Any]:
    return {
        "algorithm": "grpo",
        "base_model": str(model),
        "train_file": str(data / "prompts.jsonl"),
        "reward": [{"type": "rule", "rule": "regex", "pattern": "[aeiou]"}],
        "hyperparameters": {"num_generations": 4, "max_new_tokens": 8, "batch_size": 2, "temperature": 1.0},
    }


def run_signalled(tmp_path: Path, spec: dict[str, Any], after_step: int, times: int = 1) -> Result:
    """Run the trainer in a subprocess and send SIGUSR1 (`times` times) once it reported `after_step`."""
    spec_path = make_spec(tmp_path, **spec)
    out, events = tmp_path / "signalled", tmp_path / "signalled.events.jsonl"
    cmd = [sys.executable, "-m", "trainer", "run", str(spec_path), "--output", str(out), "--events", str(events)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(e["type"] == "progress" and e["step"] >= after_step for e in read_events(events)):
        assert proc.poll() is None and time.monotonic() < deadline, "the trainer ended before it was signalled"
        time.sleep(0.01)
    for _ in range(times):
        proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    return Result(proc.returncode, read_events(events), out, stderr)


@pytest.mark.parametrize("make_spec_of", [dpo_spec, grpo_spec], ids=["dpo", "grpo"])
def test_sigusr1_saves_at_the_next_step_boundary_and_resume_continues_the_uninterrupted_losses(
    run_inprocess: Callable[..., Result],
    tiny_model: Path,
    data_dir: Path,
    tmp_path: Path,
    make_spec_of: Callable[[Path, Path], dict[str, Any]],
) -> None:
    spec = make_spec_of(tiny_model, data_dir)
    spec |= {"seed": 5, "hyperparameters": {**HYPER, **spec.get("hyperparameters", {})}}
    stopped = run_signalled(tmp_path, spec, after_step=2, times=3)  # a repeated signal changes nothing

    assert stopped.code == STOPPED_EXIT_CODE, stopped.stderr[-3000:]
    last = stopped.events[-1]
    assert last["type"] == "stopped" and not stopped.of_type("done")
    step = last["step"]
    assert 2 <= step < 16
    assert last["checkpoint"] == str((stopped.output / "checkpoints" / f"step-{step:08d}").resolve())
    assert [e["step"] for e in stopped.of_type("checkpoint")] == [step]
    assert (Path(last["checkpoint"]) / "training_state" / "state.pt").is_file()
    assert sorted(stopped.losses()) == list(range(1, step + 1))  # every step up to the boundary, none after

    full = run_inprocess(spec, output="full")
    assert full.code == 0
    resumed = run_inprocess(spec, output="resumed", resume=Path(last["checkpoint"]))
    assert resumed.code == 0, resumed.events[-1]
    assert stopped.losses() == pytest.approx({s: v for s, v in full.losses().items() if s <= step}, rel=1e-5)
    assert sorted(resumed.losses()) == list(range(step + 1, 17))
    assert resumed.losses() == pytest.approx({s: v for s, v in full.losses().items() if s > step}, rel=1e-5, abs=1e-7)


def test_a_run_asked_to_stop_where_its_checkpoint_exists_stops_without_saving_again(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    spec = dpo_spec(tiny_model, data_dir)
    spec["hyperparameters"] |= {**HYPER, "max_steps": 4, "save_every": 2}
    first = run_inprocess(spec, output="first")
    assert first.code == 0
    request_save_and_stop()  # as if SIGUSR1 came while the resumed run was loading
    try:
        resumed = run_inprocess(spec, output="resumed", resume=first.output / "checkpoints" / "step-00000002")
    finally:
        clear_save_and_stop()
    assert resumed.code == STOPPED_EXIT_CODE
    assert resumed.events[-1] == {"type": "stopped", "step": 2, "checkpoint": None}
    assert not resumed.of_type("checkpoint") and not resumed.of_type("metrics")
