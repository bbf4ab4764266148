"""A run resumed from an intermediate checkpoint reproduces the uninterrupted loss trajectory."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.trainer.conftest import Result


@pytest.mark.parametrize(
    ("algorithm", "train", "lora"),
    [
        ("dpo", "pref.jsonl", None),
        ("dpo", "pref.jsonl", {"r": 4, "alpha": 8, "dropout": 0.1}),  # dropout: the RNG state must be restored too
        ("reward", "pref_standard.jsonl", None),
    ],
    ids=["dpo", "dpo-lora-dropout", "reward"],
)
def test_resumed_run_reproduces_the_uninterrupted_losses(
    run_inprocess: Callable[..., Result],
    tiny_model: Path,
    data_dir: Path,
    algorithm: str,
    train: str,
    lora: dict[str, Any] | None,
) -> None:
    spec = {
        "algorithm": algorithm,
        "base_model": str(tiny_model),
        "train_file": str(data_dir / train),
        "lora": lora,
        "seed": 3,
        "hyperparameters": {
            "learning_rate": 5e-3,
            "lr_scheduler": "cosine",
            "warmup_ratio": 0.2,
            "batch_size": 4,
            "micro_batch_size": 2,
            "max_steps": 5,  # 20 examples over 6 rows: crosses epoch boundaries
            "save_every": 2,
            "max_length": 64,
            "max_prompt_length": 48,
        },
    }
    if lora is not None:
        spec["hyperparameters"]["disable_dropout"] = False  # keep the LoRA dropout whose RNG state is the point
    full = run_inprocess(spec, output="full")
    assert full.code == 0
    checkpoint = full.output / "checkpoints" / "step-00000002"
    # tensors and plain values only: the state loads without unpickling arbitrary objects
    state = torch.load(checkpoint / "training_state" / "state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "rng", "extra"} <= set(state)
    resumed = run_inprocess(spec, output="resumed", resume=checkpoint)
    assert resumed.code == 0, resumed.events[-1]
    want = {step: loss for step, loss in full.losses().items() if step > 2}
    assert sorted(resumed.losses()) == [3, 4, 5]
    assert resumed.losses() == pytest.approx(want, rel=1e-5, abs=1e-7)
    lrs = {e["step"]: e["values"]["learning_rate"] for e in full.of_type("metrics")}
    assert {e["step"]: e["values"]["learning_rate"] for e in resumed.of_type("metrics")} == {
        s: lrs[s] for s in (3, 4, 5)
    }


def test_resume_from_a_folder_without_training_state_is_an_error(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    spec = {"algorithm": "dpo", "base_model": str(tiny_model), "train_file": str(data_dir / "pref.jsonl")}
    result = run_inprocess(spec, resume=tiny_model)
    assert result.code == 1
    assert result.events[-1]["code"] == "invalid_resume"
    assert "intermediate checkpoint" in result.events[-1]["message"]


class _OpensAFile:
    """Unpickling this object opens (creates) a file: a stand-in for code planted in the artifact store."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_resume_refuses_a_training_state_holding_a_pickled_object(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    checkpoint = tmp_path / "planted"
    shutil.copytree(tiny_model, checkpoint)
    (checkpoint / "training_state").mkdir()
    (checkpoint / "training_state" / "state.json").write_text(json.dumps({"step": 1, "consumed": 2, "metrics": {}}))
    marker = tmp_path / "code-ran"
    torch.save({"optimizer": _OpensAFile(marker)}, checkpoint / "training_state" / "state.pt")

    spec = {"algorithm": "dpo", "base_model": str(tiny_model), "train_file": str(data_dir / "pref.jsonl")}
    result = run_inprocess(spec, resume=checkpoint)
    assert result.code == 1
    assert result.events[-1]["code"] == "invalid_resume"
    assert "refused" in result.events[-1]["message"]
    assert not marker.exists()
