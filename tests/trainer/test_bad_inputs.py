"""Every bad input ends with an actionable error event, a non-zero exit and no finished-looking checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tests.trainer.conftest import ROOT, Result, make_spec, read_events, write_jsonl


def spec_for(model: Path | str, train: Path, algorithm: str = "dpo", **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "base_model": str(model),
        "train_file": str(train),
        "hyperparameters": {"batch_size": 2, "max_steps": 2, "max_length": 64, "max_prompt_length": 32, **hyper},
    }


def assert_failed(result: Result, code: str, *phrases: str) -> str:
    assert result.code != 0
    error = result.events[-1]
    assert error["type"] == "error", result.events[-3:]
    assert error["code"] == code, error
    for phrase in phrases:
        assert phrase in error["message"], error["message"]
    assert not (result.output / "final").exists()
    checkpoints = result.output / "checkpoints"
    assert not checkpoints.exists() or not any(p.name.startswith("step-") for p in checkpoints.iterdir())
    assert not result.of_type("checkpoint")
    return str(error["message"])


def test_missing_model_folder_says_what_a_base_model_can_be(
    run_inprocess: Callable[..., Result], data_dir: Path, tmp_path: Path
) -> None:
    result = run_inprocess(spec_for(tmp_path / "no-such-model", data_dir / "pref.jsonl"))
    assert_failed(result, "model_load_failed", "no such folder", "Hugging Face model folder")


def test_model_folder_with_a_corrupt_config_is_a_model_load_error(
    run_inprocess: Callable[..., Result], data_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    result = run_inprocess(spec_for(broken, data_dir / "pref.jsonl"))
    assert_failed(result, "model_load_failed", str(broken))


def test_sft_dataset_for_dpo_names_both_kinds(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    result = run_inprocess(spec_for(tiny_model, data_dir / "sft.jsonl"))
    assert_failed(result, "invalid_dataset", "sft dataset", "needs a preference dataset")


def test_prompt_only_dataset_for_reward_training_is_refused(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    result = run_inprocess(spec_for(tiny_model, data_dir / "prompts.jsonl", "reward"))
    assert_failed(result, "invalid_dataset", "prompt dataset", "preference")


def test_empty_completion_names_the_row_and_the_field(
    run_inprocess: Callable[..., Result], tiny_model: Path, tmp_path: Path
) -> None:
    rows = [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "  ", "rejected": "c"}]
    result = run_inprocess(spec_for(tiny_model, write_jsonl(tmp_path / "d.jsonl", rows)))
    assert_failed(result, "invalid_dataset", "row 2", '"chosen" is empty')


def test_empty_sft_completion_is_refused(
    run_inprocess: Callable[..., Result], tiny_model: Path, tmp_path: Path
) -> None:
    rows = [{"prompt": "a", "completion": ""}]
    result = run_inprocess(spec_for(tiny_model, write_jsonl(tmp_path / "d.jsonl", rows), "sft"))
    assert_failed(result, "invalid_dataset", "row 1", "completion")


def test_all_rows_longer_than_max_length_asks_to_raise_it(
    run_inprocess: Callable[..., Result], tiny_model: Path, tmp_path: Path
) -> None:
    rows = [{"prompt": "p" * 40, "chosen": "yes " * 20, "rejected": "no " * 20}] * 3
    spec = spec_for(tiny_model, write_jsonl(tmp_path / "d.jsonl", rows), max_length=32, max_prompt_length=16)
    assert_failed(run_inprocess(spec), "invalid_dataset", "every train row is longer", "raise max_length")


def test_out_of_range_hyperparameter_names_the_field(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    result = run_inprocess(spec_for(tiny_model, data_dir / "pref.jsonl", beta=-1))
    assert_failed(result, "invalid_hyperparameters", "hyperparameters.beta")


def test_nan_loss_stops_the_run_and_suggests_a_fix(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    poisoned = tmp_path / "poisoned"
    poisoned.mkdir()
    for f in tiny_model.iterdir():
        (poisoned / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(tiny_model / "model.safetensors"))
    tensors["model.norm.weight"] = torch.full_like(tensors["model.norm.weight"], float("nan"))
    save_file(tensors, str(poisoned / "model.safetensors"), metadata={"format": "pt"})
    result = run_inprocess(spec_for(poisoned, data_dir / "pref.jsonl", precompute_ref_logps=False, save_every=1))
    assert_failed(result, "nan_loss", "step 1", "learning_rate")


def test_sigterm_stops_the_trainer_at_once_with_143_and_no_final_checkpoint(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path, **spec_for(tiny_model, data_dir / "pref.jsonl", max_steps=100_000, learning_rate=1e-4))
    events = tmp_path / "events.jsonl"
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "trainer", "run", str(spec), "--output", str(out), "--events", str(events)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not any(e["type"] == "progress" for e in read_events(events)):
            assert proc.poll() is None and time.monotonic() < deadline, read_events(events)
            time.sleep(0.2)
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert time.monotonic() - sent < 10
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "final").exists()
    assert not any(e["type"] in ("done", "checkpoint") for e in read_events(events))
    assert json.dumps(read_events(events)[-1]).find("SIGTERM") > 0
