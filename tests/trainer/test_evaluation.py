"""Evaluation during training: GRPO/PPO eval on held-out prompts, the best checkpoint, early stopping.

Tiny-model runs of a few steps (about 10-25 s each on two busy cores); the slow test at the end shows
a real model's held-out reward rising under GRPO.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from tests.trainer.conftest import write_jsonl
from tests.trainer.online import gsm8k_prompts, of_type, run_trainer
from trainer.config import DPOConfig, GRPOConfig, PPOConfig, SFTConfig, TrainSpec
from trainer.evaluation import is_improvement

EVAL_KEYS = {
    "eval/reward",
    "eval/reward_std",
    "eval/rewards/vowel",
    "eval/rewards/short",
    "eval/completions/mean_length",
    "eval/completions/clipped_ratio",
}
VOWEL = [{"type": "rule", "rule": "regex", "pattern": "[aeiou]", "name": "vowel"}]
REWARD = [*VOWEL, {"type": "rule", "rule": "length", "target_length": 6, "name": "short"}]
"""Two components: a 0/1 one and a graded one, so that even a tiny random model's completions get
different rewards and every update moves the weights."""


# --- pure pieces ---------------------------------------------------------------------------------


def test_an_improvement_is_strictly_better_by_more_than_the_threshold_in_the_chosen_direction() -> None:
    assert is_improvement(0.5, None, "min") and is_improvement(0.5, None, "max")
    assert is_improvement(0.4, 0.5, "min") and not is_improvement(0.5, 0.5, "min")
    assert is_improvement(0.6, 0.5, "max") and not is_improvement(0.4, 0.5, "max")
    assert not is_improvement(0.45, 0.5, "min", threshold=0.1) and is_improvement(0.35, 0.5, "min", threshold=0.1)
    assert not is_improvement(math.nan, None, "max") and not is_improvement(math.inf, 0.5, "max")


def test_best_metric_takes_the_eval_prefix_and_a_direction_from_its_name_unless_given() -> None:
    assert (SFTConfig(best_metric="loss").best_metric, SFTConfig(best_metric="loss").best_metric_mode) == (
        "eval/loss",
        "min",
    )
    assert DPOConfig(best_metric="eval/rewards/accuracies").best_metric_mode == "max"
    assert GRPOConfig(best_metric="reward").best_metric_mode == "max"
    assert PPOConfig(best_metric="eval/completions/mean_length", best_metric_mode="min").best_metric_mode == "min"
    assert GRPOConfig(best_metric="rewards/vowel").best_metric == "eval/rewards/vowel"
    assert GRPOConfig().best_metric is None and GRPOConfig().best_metric_mode is None


@pytest.mark.parametrize(
    ("config", "values", "field"),
    [
        (SFTConfig, {"best_metric": "eval/reward"}, "best_metric"),
        (GRPOConfig, {"best_metric": "eval/loss"}, "best_metric"),
        (GRPOConfig, {"best_metric": "eval/rewards/"}, "best_metric"),
        (PPOConfig, {"best_metric": "objective/kl"}, "best_metric"),
        (DPOConfig, {"eval_every": 5, "early_stopping_patience": 2}, "early_stopping_patience"),
        (GRPOConfig, {"best_metric": "reward", "early_stopping_patience": 2}, "early_stopping_patience"),
        (PPOConfig, {"eval_num_generations": 2}, "eval_num_generations"),
        (GRPOConfig, {"early_stopping_threshold": -1.0}, "early_stopping_threshold"),
    ],
)
def test_eval_settings_that_cannot_work_are_refused_naming_the_field(
    config: type, values: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        config(**values)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_a_spec_with_best_metric_needs_an_eval_file_and_a_reward_component_it_names() -> None:
    spec = {"algorithm": "grpo", "base_model": "m", "train_file": "t.jsonl", "reward": VOWEL}
    with pytest.raises(ValidationError, match="needs an eval_file"):
        TrainSpec.model_validate(spec | {"hyperparameters": {"best_metric": "eval/reward"}})
    with pytest.raises(ValidationError, match="names no reward component; the components are eval/rewards/vowel"):
        TrainSpec.model_validate(spec | {"eval_file": "e.jsonl", "hyperparameters": {"best_metric": "rewards/regex"}})
    TrainSpec.model_validate(spec | {"eval_file": "e.jsonl", "hyperparameters": {"best_metric": "rewards/vowel"}})


# --- GRPO and PPO evaluate on held-out prompts ---------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("data")
    train = gsm8k_prompts(folder / "train.jsonl", rows=6)
    held_out = folder / "eval.jsonl"
    held_out.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in ("Name a fruit.", "Count to three.")))
    return train, held_out


def online_spec(algorithm: str, model: Path, train: Path, held_out: Path | None, **hyper: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "algorithm": algorithm,
        "base_model": str(model),
        "train_file": str(train),
        "reward": REWARD,
        "seed": 3,
        "hyperparameters": {
            "batch_size": 2,
            "max_new_tokens": 8,
            "max_steps": 4,
            "learning_rate": 1e-3,
            "max_prompt_length": 64,
            "max_length": 128,
            **({"num_generations": 4} if algorithm == "grpo" else {"ppo_epochs": 1}),
            **hyper,
        },
    }
    if held_out is not None:
        spec["eval_file"] = str(held_out)
    return spec


def training_values(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per step, the training metrics that depend on the random stream and the weights (no timings)."""
    keep = ("loss", "reward", "kl", "clip_ratio", "grad_norm", "loss/policy", "loss/value", "objective/kl")
    return {
        e["step"]: {k: v for k, v in e["values"].items() if k in keep}
        for e in of_type(events, "metrics")
        if "loss" in e["values"]
    }


@pytest.fixture(scope="module", params=["grpo", "ppo"])
def with_and_without_eval(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny: Path, data: tuple[Path, Path]
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """One run evaluating every 2 steps with *sampled* eval completions (they draw random numbers), one without."""
    algorithm, (train, held_out) = request.param, data
    tmp = tmp_path_factory.mktemp(algorithm)
    sampled = {"eval_every": 2, "eval_temperature": 1.0, "eval_num_generations": 2, "best_metric": "reward"}
    started = time.perf_counter()
    code, evaluated, _ = run_trainer(tmp, online_spec(algorithm, tiny, train, held_out, **sampled), "with")
    assert code == 0, evaluated[-1]
    code, plain, _ = run_trainer(tmp, online_spec(algorithm, tiny, train, None), "without")
    assert code == 0, plain[-1]
    print(f"{algorithm}: two 4-step runs in {time.perf_counter() - started:.0f}s")
    return algorithm, evaluated, plain


def test_grpo_and_ppo_report_eval_metrics_every_eval_every_steps_and_at_the_end(
    with_and_without_eval: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    _, events, plain = with_and_without_eval
    evals = [e for e in of_type(events, "metrics") if any(k.startswith("eval/") for k in e["values"])]
    assert [e["step"] for e in evals] == [2, 4]
    for e in evals:
        assert set(e["values"]) == EVAL_KEYS
        assert 0.0 <= e["values"]["eval/rewards/vowel"] <= 1.0 and e["values"]["eval/rewards/short"] <= 0.0
        parts = e["values"]["eval/rewards/vowel"] + e["values"]["eval/rewards/short"]
        assert e["values"]["eval/reward"] == pytest.approx(parts)
        assert 1 <= e["values"]["eval/completions/mean_length"] <= 8
    assert not any(k.startswith("eval/") for e in of_type(plain, "metrics") for k in e["values"])


def test_eval_samples_are_marked_with_split_eval_and_training_samples_keep_their_shape(
    with_and_without_eval: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    _, events, _ = with_and_without_eval
    samples = of_type(events, "sample")
    held_out = [s for s in samples if s.get("split") == "eval"]
    assert [s["step"] for s in held_out] == [2, 2, 4, 4]
    assert {s["prompt"] for s in held_out} == {"Name a fruit."}  # 2 completions of the first eval prompt
    for s in held_out:
        assert set(s) == {"type", "step", "split", "prompt", "completion", "reward", "rewards"}
        assert s["rewards"]["vowel"] == float(any(c in "aeiou" for c in s["completion"]))
        assert s["rewards"]["short"] == pytest.approx(-abs(len(s["completion"]) - 6) / 6)
        assert s["reward"] == pytest.approx(s["rewards"]["vowel"] + s["rewards"]["short"])
    training = [s for s in samples if "split" not in s]
    assert training and all(set(s) == {"type", "step", "prompt", "completion", "reward", "rewards"} for s in training)


def test_evaluating_does_not_change_the_training_of_grpo_or_ppo(
    with_and_without_eval: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    algorithm, evaluated, plain = with_and_without_eval
    with_eval, without = training_values(evaluated), training_values(plain)
    assert sorted(with_eval) == [1, 2, 3, 4]
    assert any(v["grad_norm"] > 0 for v in without.values()), without  # the weights did move
    assert with_eval == without, algorithm  # exactly: same random stream, same weights
    completions = [[s["completion"] for s in of_type(run, "sample") if "split" not in s] for run in (evaluated, plain)]
    assert completions[0] == completions[1]


def test_the_best_checkpoints_of_grpo_and_ppo_follow_the_best_eval_reward_so_far(
    with_and_without_eval: tuple[str, list[dict[str, Any]], list[dict[str, Any]]],
) -> None:
    _, events, _ = with_and_without_eval
    rewards = {
        e["step"]: e["values"]["eval/reward"] for e in of_type(events, "metrics") if "eval/reward" in e["values"]
    }
    expected, best = [], -math.inf
    for step, value in sorted(rewards.items()):
        if value > best:
            expected.append(step)
            best = value
    saved = [e for e in of_type(events, "checkpoint") if e["kind"] == "best"]
    assert [e["step"] for e in saved] == expected
    assert saved[-1]["metrics"]["eval/reward"] == max(rewards.values())


# --- the best checkpoint and early stopping (offline algorithms) ---------------------------------


def sft_spec(model: Path, data_dir: Path, **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": "sft",
        "base_model": str(model),
        "train_file": str(data_dir / "sft.jsonl"),
        "eval_file": str(data_dir / "sft-eval.jsonl"),
        "seed": 0,
        "hyperparameters": {"batch_size": 2, "max_length": 64, "max_prompt_length": 32, **hyper},
    }


@pytest.fixture
def sft_data(data_dir: Path) -> Path:
    held_out = [("Name a colour.", "Red"), ("Capital of Italy?", "Rome"), ("2 + 5?", "7")]
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in held_out]
    write_jsonl(data_dir / "sft-eval.jsonl", rows)
    return data_dir


def eval_series(events: list[dict[str, Any]], name: str) -> dict[int, float]:
    return {e["step"]: e["values"][name] for e in of_type(events, "metrics") if name in e["values"]}


def test_the_best_checkpoint_is_the_one_with_the_lowest_eval_loss_of_the_run(
    tmp_path: Path, tiny_model: Path, sft_data: Path
) -> None:
    # A learning rate high enough that the held-out loss first falls, then may rise: whichever it does,
    # the best checkpoints must follow the eval/loss events.
    hyper = {"max_steps": 6, "eval_every": 1, "eval_on_start": True, "learning_rate": 3e-2, "best_metric": "loss"}
    code, events, out = run_trainer(tmp_path, sft_spec(tiny_model, sft_data, **hyper))
    assert code == 0, events[-1]
    losses = eval_series(events, "eval/loss")
    assert sorted(losses) == [0, 1, 2, 3, 4, 5, 6]  # step 0: eval_on_start, the base model
    running_best = [
        s for s in sorted(losses) if losses[s] < min((losses[t] for t in losses if t < s), default=math.inf)
    ]
    saved = [e for e in of_type(events, "checkpoint") if e["kind"] == "best"]
    assert [e["step"] for e in saved] == running_best
    best_step = min(losses, key=lambda s: losses[s])
    info = json.loads((out / "best" / "alignd.json").read_text())
    assert (info["kind"], info["step"], info["metrics"]["eval/loss"]) == ("best", best_step, losses[best_step])
    assert json.loads((out / "final" / "alignd.json").read_text())["step"] == 6
    assert not (out / "best" / "training_state").exists()  # a model folder, not a resumable checkpoint


def test_early_stopping_ends_the_run_after_patience_evaluations_without_improvement(
    tmp_path: Path, tiny_model: Path, sft_data: Path
) -> None:
    # best_metric_mode max on a loss that training lowers: nothing after the first evaluation improves.
    hyper = {"max_steps": 10, "eval_every": 1, "learning_rate": 1e-2, "best_metric": "eval/loss"}
    hyper |= {"best_metric_mode": "max", "early_stopping_patience": 2}
    code, events, out = run_trainer(tmp_path, sft_spec(tiny_model, sft_data, **hyper))
    assert code == 0 and events[-1]["type"] == "done", events[-1]
    losses = eval_series(events, "eval/loss")
    best, since, expected_stop = -math.inf, 0, None
    for step in sorted(losses):  # the rule, computed again from the metric events
        if losses[step] > best:
            best, since = losses[step], 0
        else:
            since += 1
        if since == 2:
            expected_stop = step
            break
    assert expected_stop is not None and expected_stop < 10, losses  # the run did have to stop early
    assert max(losses) == expected_stop  # no evaluation (nor training step) after the stop
    assert max(e["step"] for e in of_type(events, "metrics")) == expected_stop
    final = [e for e in of_type(events, "checkpoint") if e["kind"] == "final"]
    assert [e["step"] for e in final] == [expected_stop]
    assert json.loads((out / "final" / "alignd.json").read_text())["step"] == expected_stop
    stop_logs = [e["message"] for e in of_type(events, "log") if "early stopping" in e["message"]]
    assert (
        len(stop_logs) == 1
        and f"step {expected_stop}" in stop_logs[0]
        and "early_stopping_patience = 2" in stop_logs[0]
    )


# --- slow: a real model's held-out reward rises --------------------------------------------------


@pytest.mark.slow
def test_grpo_on_smollm2_raises_the_greedy_reward_on_held_out_prompts(tmp_path: Path, smollm2: Path) -> None:
    """GRPO with LoRA on SmolLM2-135M-Instruct, rewarded for opening with its plan ("To find ..."), a
    format it samples for about a third of GSM8K questions (tests/trainer/test_grpo.py). Eight held-out
    questions, answered greedily, are scored before the first step (eval_on_start) and every 2 steps.
    Seen here (seed 0): held-out reward 0.25 (2 of 8) at step 0, 0.875 at step 2, 1.0 at step 4 (still
    1.0 at step 8 of a longer run); training reward 0.375, 0.25, 0.75, 0.875. The run took 528 s with
    the two cores shared by a dozen other processes (69-86 s per step); at MODELS.md's ~5 s per step it
    takes about a minute plus the GGUF conversion."""
    picked = gsm8k_prompts(tmp_path / "questions.jsonl", rows=72, conversational=True, shortest_of=1000)
    rows = picked.read_text().splitlines()
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    train.write_text("\n".join(rows[:64]) + "\n")
    held_out.write_text("\n".join(rows[64:]) + "\n")
    spec = {
        "algorithm": "grpo",
        "base_model": str(smollm2),
        "train_file": str(train),
        "eval_file": str(held_out),
        "reward": [{"type": "rule", "rule": "format", "pattern": r"To\b.*", "name": "states_plan"}],
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "hyperparameters": {
            "batch_size": 2,
            "num_generations": 4,
            "max_new_tokens": 8,
            "max_steps": 4,
            "learning_rate": 5e-4,
            "lr_scheduler": "constant",
            "beta": 0.0,
            "loss_type": "dr_grpo",
            "max_prompt_length": 160,
            "max_length": 200,
            "eval_every": 2,
            "eval_on_start": True,
            "best_metric": "reward",
        },
    }
    started = time.perf_counter()
    code, events, out = run_trainer(tmp_path, spec)
    assert code == 0, events[-1]
    rewards = eval_series(events, "eval/reward")
    print(f"GRPO SmolLM2 held-out greedy reward by step: {rewards} ({time.perf_counter() - started:.0f}s)")
    train_rewards = [round(e["values"]["reward"], 3) for e in of_type(events, "metrics") if "reward" in e["values"]]
    print("train reward by step:", train_rewards)
    assert sorted(rewards) == [0, 2, 4]
    assert rewards[4] >= rewards[0] + 0.25  # at least 2 more of the 8 held-out answers open with a plan
    best = json.loads((out / "best" / "alignd.json").read_text())
    assert best["metrics"]["eval/reward"] == max(rewards.values())
