"""DPO's precomputed reference log-probs on two processes: each computes half, all get the whole table."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.trainer.online import of_type
from tests.trainer.processes import launch
from trainer.config import DPOConfig
from trainer.dpo import rows_to_train


def test_two_processes_share_the_reference_log_probs_each_computing_half(
    tmp_path: Path, tiny_model: Path, data_dir: Path
) -> None:
    spec = {
        "algorithm": "dpo",
        "base_model": str(tiny_model),
        "train_file": str(data_dir / "pref.jsonl"),
        "seed": 0,
        "hyperparameters": {
            "batch_size": 2,
            "micro_batch_size": 1,
            "max_steps": 2,
            "save_every": 1,
            "max_length": 128,
            "max_prompt_length": 64,
        },
    }
    _, out_one = launch(tmp_path, spec, "one", 1)
    two, out_two = launch(tmp_path, spec, "two", 2)
    state = "checkpoints/step-00000001/training_state/state.pt"
    table_one = torch.load(out_one / state, weights_only=True)["extra"]["ref_train"]
    table_two = torch.load(out_two / state, weights_only=True)["extra"]["ref_train"]
    # 2 steps x 2 pairs of 6: only the pairs the run draws are computed (full fine-tuning: before step 1)
    used = rows_to_train(DPOConfig(batch_size=2, max_steps=2), 6, seed=0)
    assert len(used) == 4
    assert table_one.shape == (6, 2) and bool((table_one[used] < 0).all())
    assert bool(table_one[[i for i in range(6) if i not in used]].isnan().all())
    # the gathered halves are the whole table, in data order
    torch.testing.assert_close(table_two, table_one, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert any("shared by 2 process(es)" in e["message"] for e in of_type(two, "log"))
    assert len(of_type(two, "checkpoint")) == 2  # step 1 and final, written once
