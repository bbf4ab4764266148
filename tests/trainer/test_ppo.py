"""PPO: a few steps on a tiny model through the CLI (value head and separate value model), resume, bad input."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import build_tiny_model
from tests.trainer.online import of_type, run_trainer
from trainer.models import load_model
from trainer.ppo import AdaptiveKLController

REQUIRED_METRICS = {
    "loss/policy",
    "loss/value",
    "objective/kl",
    "objective/scores",
    "policy/clipfrac",
    "policy/approxkl",
    "val/clipfrac",
    "val/vpred",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "samples_per_second",
    "step_time",
    "time/generation",
    "time/scoring",
    "time/logprobs",
    "time/update",
}


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "reward", kind="seqcls", seed=1)


def ppo_spec(model: Path, data: Path, reward: list[dict[str, Any]], **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": "ppo",
        "base_model": str(model),
        "train_file": str(data),
        "reward": reward,
        "hyperparameters": {
            "batch_size": 4,
            "num_minibatches": 2,
            "ppo_epochs": 2,
            "max_new_tokens": 8,
            "max_steps": 3,
            "learning_rate": 1e-3,
            "max_prompt_length": 64,
            "max_length": 128,
            **hyper,
        },
    }


def test_ppo_with_a_reward_model_trains_a_few_steps_and_saves_a_reloadable_policy(
    tmp_path: Path, tiny: Path, reward_model: Path, prompts: Path
) -> None:
    reward = [
        {"type": "model", "model": str(reward_model), "name": "rm"},
        {"type": "rule", "rule": "regex", "pattern": "[aeiou]", "weight": 0.5},
    ]
    spec = ppo_spec(tiny, prompts, reward, save_every=2, missing_eos_penalty=1.0, micro_batch_size=1)
    code, events, out = run_trainer(tmp_path, spec)
    assert code == 0, events[-1]
    assert events[-1] == {"type": "done"}
    metrics = of_type(events, "metrics")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert set(m["values"]) >= REQUIRED_METRICS, REQUIRED_METRICS - set(m["values"])
        assert all(math.isfinite(v) for v in m["values"].values())
        assert {"rewards/rm", "rewards/regex"} <= set(m["values"])
    # the rollout policy equals the reference at step 1: no KL yet; the updates then move it away
    assert metrics[0]["values"]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert metrics[2]["values"]["objective/kl"] != pytest.approx(0.0, abs=1e-6)
    # random tiny models never emit EOS in 8 tokens: every score carries the missing-EOS penalty
    first = metrics[0]["values"]
    expected = first["rewards/rm"] + 0.5 * first["rewards/regex"] - first["completions/clipped_ratio"]
    assert first["objective/scores"] == pytest.approx(expected, abs=1e-5)
    assert [(c["step"], c["kind"]) for c in of_type(events, "checkpoint")] == [(2, "intermediate"), (3, "final")]
    assert of_type(events, "sample")

    before = load_file(str(tiny / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    load_model(str(out / "final"))

    state = torch.load(out / "checkpoints" / "step-00000002" / "training_state" / "state.pt", weights_only=True)
    assert set(state["extra"]) == {"value", "kl_coef"}  # the value head and the KL controller resume too
    code, resumed, _ = run_trainer(tmp_path, spec, name="resumed", resume=out / "checkpoints" / "step-00000002")
    assert code == 0, resumed[-1]
    assert [m["step"] for m in of_type(resumed, "metrics")] == [3]


def test_ppo_with_a_separate_value_model_lora_and_k3_adaptive_kl(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    reward = [{"type": "rule", "rule": "length", "target_length": 4}]
    spec = ppo_spec(
        tiny,
        prompts,
        reward,
        value_model="separate",
        kl_estimator="k3",
        adaptive_kl_target=0.01,
        adaptive_kl_horizon=10,
        learning_rate=5e-2,
        whiten_rewards=True,
    )
    spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    code, events, out = run_trainer(tmp_path, spec)
    assert code == 0, events[-1]
    values = [m["values"] for m in of_type(events, "metrics")]
    assert values[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert values[-1]["objective/kl"] >= 0  # k3 is never negative
    # KL below target at step 1 lowers kl_coef: 0.05 * (1 - 0.2 * 4 / 10)
    assert values[1]["kl_coef"] == pytest.approx(0.05 * (1 - 0.2 * 4 / 10))
    assert (out / "final" / "adapter_config.json").is_file()


def test_ppo_in_bf16_feeds_the_fp32_value_head_and_trains(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    # Found on a GPU (bench/gpu_check.sh): a bf16 trunk into the fp32 value head was a dtype error.
    reward = [{"type": "rule", "rule": "length", "target_length": 8}]
    code, events, _ = run_trainer(tmp_path, ppo_spec(tiny, prompts, reward, precision="bf16", max_steps=1))
    assert code == 0, events[-1]
    assert all(math.isfinite(v) for v in of_type(events, "metrics")[0]["values"].values())


def test_adaptive_kl_controller_moves_towards_the_target() -> None:
    controller = AdaptiveKLController(0.1, target=6.0, horizon=100)
    controller.update(current_kl=12.0, n_steps=10)  # error clipped to +0.2
    assert controller.value == pytest.approx(0.1 * 1.02)
    controller.update(current_kl=5.4, n_steps=10)  # error -0.1
    assert controller.value == pytest.approx(0.1 * 1.02 * 0.99)
    fixed = AdaptiveKLController(0.1, target=None, horizon=100)
    fixed.update(current_kl=100.0, n_steps=10)
    assert fixed.value == 0.1


def test_ppo_refuses_a_preference_dataset_and_a_missing_reward_column(
    tmp_path: Path, tiny: Path, prompts: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "2+2?", "chosen": "4", "rejected": "5"}\n')
    rule = [{"type": "rule", "rule": "exact_match"}]
    code, events, _ = run_trainer(tmp_path, ppo_spec(tiny, pairs, rule), name="pairs")
    assert code == 1 and events[-1]["code"] == "invalid_dataset"
    code, events, _ = run_trainer(
        tmp_path, ppo_spec(tiny, prompts, [{"type": "rule", "rule": "contains", "column": "label"}]), name="col"
    )
    assert code == 1 and events[-1]["code"] == "reward_failed" and "column 'label'" in events[-1]["message"]
