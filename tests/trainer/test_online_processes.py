"""GRPO and PPO on two processes (`accelerate launch --multi_gpu --num_processes 2` on CPU: gloo) against one.

Each completion samples with a seed of its data position, so both runs draw the same completions; losses
are divided by whole-batch totals and gradients summed, so the two runs should log the same losses,
rewards and KL at every step, and the same eval metrics (each process evaluates a share of the eval
prompts). Checkpoints are written once, by the main process, and a two-process run
resumes from one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.online import gsm8k_prompts, of_type
from tests.trainer.processes import launch
from trainer.online_eval import eval_share


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gsm8k_prompts(tmp_path_factory.mktemp("data") / "gsm8k-prompts.jsonl", rows=8, shortest_of=40)


def metrics_by_step(events: list[dict[str, Any]], names: tuple[str, ...]) -> dict[int, dict[str, float]]:
    return {e["step"]: {n: e["values"][n] for n in names} for e in of_type(events, "metrics")}


def assert_same_metrics(one: dict[int, dict[str, float]], two: dict[int, dict[str, float]]) -> None:
    assert one.keys() == two.keys()
    for step in one:
        for name, value in one[step].items():
            assert two[step][name] == pytest.approx(value, rel=1e-3, abs=1e-5), (step, name, one[step], two[step])


def grpo_spec(model: Path, data: Path, **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": "grpo",
        "base_model": str(model),
        "train_file": str(data),
        "seed": 3,
        "reward": [{"type": "rule", "rule": "regex", "pattern": "[aeiou]"}],
        "hyperparameters": {
            "batch_size": 2,
            "num_generations": 4,
            "max_new_tokens": 10,
            "max_steps": 3,
            "learning_rate": 1e-2,
            "max_prompt_length": 64,
            "max_length": 128,
            "beta": 0.04,
            "save_every": 2,
            **hyper,
        },
    }


def test_grpo_on_two_processes_logs_the_losses_of_one_process_and_saves_once(
    tmp_path: Path, tiny: Path, prompts: Path
) -> None:
    spec = grpo_spec(tiny, prompts)
    names = ("loss", "reward", "reward_std", "kl", "clip_ratio", "completions/mean_length")
    one, _ = launch(tmp_path, spec, "one", 1)
    two, out = launch(tmp_path, spec, "two", 2)
    assert_same_metrics(metrics_by_step(one, names), metrics_by_step(two, names))
    assert of_type(two, "metrics")[0]["values"]["reward_std"] > 0  # the groups' rewards differ: real advantages
    # the main process alone writes events and checkpoints
    assert [e["step"] for e in of_type(two, "progress")] == [1, 2, 3]
    assert [(e["step"], e["kind"]) for e in of_type(two, "checkpoint")] == [(2, "intermediate"), (3, "final")]
    assert len(of_type(two, "done")) == 1
    assert any("2 process(es)" in e.get("message", "") for e in of_type(two, "log"))
    assert (out / "final" / "model.safetensors").is_file()

    # resuming at step 2 on two processes reproduces the uninterrupted step 3
    resumed, _ = launch(tmp_path, spec, "resumed", 2, resume=out / "checkpoints" / "step-00000002")
    assert_same_metrics({3: metrics_by_step(two, names)[3]}, metrics_by_step(resumed, names))


def test_eval_shares_cover_every_prompt_once_in_order_however_uneven() -> None:
    for count, processes in [(5, 2), (8, 2), (5, 4), (1, 2), (0, 2), (3, 1)]:
        shares = [eval_share(count, p, processes) for p in range(processes)]
        assert [i for share in shares for i in share] == list(range(count)), (count, processes)
        assert max(len(share) for share in shares) == len(shares[0])  # the first is the largest: gather pads to it


def test_grpo_evaluation_split_over_two_processes_reports_the_metrics_and_samples_of_one_process(
    tmp_path: Path, tiny: Path, prompts: Path
) -> None:
    # 5 eval prompts in chunks of 2: one process evaluates [0, 1] [2, 3] [4], two evaluate [0, 1] [2] and
    # [3, 4]; sampled completions, so each must draw with its own seed wherever it is generated
    held_out = gsm8k_prompts(tmp_path / "eval.jsonl", rows=5, shortest_of=40)
    hyper = {"max_steps": 1, "eval_on_start": True, "eval_temperature": 1.0, "eval_num_generations": 2}
    spec = grpo_spec(tiny, prompts, **hyper) | {"eval_file": str(held_out)}
    one, _ = launch(tmp_path, spec, "one", 1)
    two, _ = launch(tmp_path, spec, "two", 2)

    def evals(events: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
        metrics = of_type(events, "metrics")
        return {e["step"]: e["values"] for e in metrics if any(k.startswith("eval/") for k in e["values"])}

    assert sorted(evals(one)) == [0, 1]
    assert_same_metrics(evals(one), evals(two))
    assert evals(two)[0]["eval/reward_std"] > 0  # the completions differ: a real comparison
    samples = [[s for s in of_type(run, "sample") if s.get("split") == "eval"] for run in (one, two)]
    assert [s["step"] for s in samples[1]] == [0, 0, 1, 1]  # written once, by the main process
    assert samples[0] == samples[1]


def test_ppo_on_two_processes_logs_the_losses_of_one_process(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    spec = {
        "algorithm": "ppo",
        "base_model": str(tiny),
        "train_file": str(prompts),
        "seed": 5,
        "reward": [{"type": "rule", "rule": "regex", "pattern": "[aeiou]"}],
        "hyperparameters": {
            "batch_size": 4,
            "max_new_tokens": 8,
            "max_steps": 2,
            "learning_rate": 1e-2,
            "max_prompt_length": 64,
            "max_length": 128,
            "ppo_epochs": 2,
            "num_minibatches": 1,
            "kl_coef": 0.05,
        },
    }
    names = ("loss/policy", "loss/value", "objective/kl", "objective/scores", "val/returns", "kl_coef")
    one, _ = launch(tmp_path, spec, "one", 1)
    two, _ = launch(tmp_path, spec, "two", 2)
    assert_same_metrics(metrics_by_step(one, names), metrics_by_step(two, names))
    assert [(e["step"], e["kind"]) for e in of_type(two, "checkpoint")] == [(2, "final")]


def test_a_batch_that_does_not_split_over_the_processes_is_refused_with_what_to_change(
    tmp_path: Path, tiny: Path, prompts: Path
) -> None:
    events, _ = launch(tmp_path, grpo_spec(tiny, prompts, batch_size=3), "odd", 2, expect_ok=False)
    (error,) = of_type(events, "error")
    assert error["code"] == "invalid_hyperparameters"
    assert "batch_size 3 must be a multiple of the 2 processes" in error["message"]
