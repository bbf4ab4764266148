"""The evaluate job type on the tiny model: pairs scored by policies (DPO implicit rewards) and reward
models, prompts scored by a reward spec; numbers compared with the trainers' own evaluation and with
an independent recomputation, never hard-coded."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.conftest import Result

DPO_HYPER = {
    "learning_rate": 5e-3,
    "batch_size": 2,
    "max_steps": 12,
    "max_length": 64,
    "max_prompt_length": 48,
    "beta": 0.1,
}
SIZES = {"max_length": 64, "max_prompt_length": 48}
EVAL_SIZES = {**SIZES, "batch_size": 4}


def _eval_spec(base: Path, data: Path, models: list[tuple[str, Path]], **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": "evaluate",
        "base_model": str(base),
        "train_file": str(data),
        "models": [{"name": name, "path": str(path)} for name, path in models],
        "hyperparameters": {**EVAL_SIZES, **hyper},
    }


def _by_model(result: Result) -> dict[str, dict[str, float]]:
    assert result.code == 0, result.stderr[-3000:] + str(result.events[-3:])
    assert result.events[-1] == {"type": "done"}
    assert not result.of_type("checkpoint"), "evaluation saves no checkpoint"
    metrics = result.of_type("metrics")
    assert [e["step"] for e in metrics] == list(range(1, len(metrics) + 1))
    return {e["model"]: e["values"] for e in metrics}


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, data_dir: Path) -> Result:
    """A DPO run that learns to prefer `chosen`, evaluating on the same pairs at the end."""
    import subprocess
    import sys

    from tests.trainer.conftest import ROOT, make_spec, read_events

    tmp = tmp_path_factory.mktemp("dpo")
    spec = make_spec(
        tmp,
        algorithm="dpo",
        base_model=str(tiny_model),
        train_file=str(data_dir / "pref.jsonl"),
        eval_file=str(data_dir / "pref.jsonl"),
        hyperparameters=DPO_HYPER,
    )
    out, events = tmp / "out", tmp / "events.jsonl"
    cmd = [sys.executable, "-m", "trainer", "run", str(spec), "--output", str(out), "--events", str(events)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Result(proc.returncode, read_events(events), out, proc.stderr)


def test_a_dpo_checkpoint_scores_higher_accuracy_and_margin_than_its_base_as_the_dpo_eval_said(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, dpo_run: Result
) -> None:
    trained = dpo_run.output / "final"
    result = run_inprocess(
        _eval_spec(tiny_model, data_dir / "pref.jsonl", [("tiny", tiny_model), ("job:dpo", trained)], beta=0.1)
    )
    scores = _by_model(result)
    base, tuned = scores["tiny"], scores["job:dpo"]

    # The base against itself (the reference): implicit rewards are exactly 0, so never "accurate".
    assert base["eval/rewards/margins"] == 0.0 and base["eval/rewards/accuracies"] == 0.0
    assert tuned["eval/rewards/accuracies"] > base["eval/rewards/accuracies"]
    assert tuned["eval/rewards/margins"] > 0.0
    assert tuned["eval/logps/accuracy"] >= base["eval/logps/accuracy"]
    assert tuned["eval/loss"] < base["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)

    # The DPO trainer's final evaluation of the same pairs, same beta, same reference: same numbers.
    said = dpo_run.of_type("metrics")[-1]["values"]
    for name in ("eval/rewards/accuracies", "eval/rewards/margins", "eval/rewards/chosen", "eval/logps/chosen"):
        assert tuned[name] == pytest.approx(said[name], rel=1e-3, abs=1e-4), name


def test_a_reward_model_is_scored_on_pairs_as_the_reward_trainer_evaluates_it(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    trained = run_inprocess(
        {
            "algorithm": "reward",
            "base_model": str(tiny_model),
            "train_file": str(data_dir / "pref.jsonl"),
            "eval_file": str(data_dir / "pref.jsonl"),
            "hyperparameters": {"learning_rate": 1e-2, "batch_size": 2, "max_steps": 6, **SIZES},
        },
        output="rm",
    )
    assert trained.code == 0, trained.stderr[-2000:]
    rm = trained.output / "final"
    scores = _by_model(run_inprocess(_eval_spec(rm, data_dir / "pref.jsonl", [("rm", rm)])))["rm"]
    said = trained.of_type("metrics")[-1]["values"]
    assert set(scores) >= {"eval/accuracy", "eval/margin", "eval/rewards/chosen", "eval/rewards/rejected"}
    for name in ("eval/accuracy", "eval/margin", "eval/loss"):
        assert scores[name] == pytest.approx(said[name], rel=1e-3, abs=1e-4), name


def test_prompts_are_scored_with_the_rules_on_the_generated_text(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from tests.tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    spec = _eval_spec(
        tiny_model,
        data_dir / "prompts.jsonl",
        [("tiny", tiny_model), ("other", other)],
        num_generations=2,
        max_new_tokens=12,
        samples_per_model=32,  # every completion (6 prompts x 2) comes back, so the test can recompute
    )
    spec["reward"] = [
        {"type": "rule", "rule": "length", "target_length": 10, "weight": 2.0},
        {"type": "rule", "rule": "regex", "pattern": "[aeiou]", "weight": 0.5},
    ]
    result = run_inprocess(spec)
    scores = _by_model(result)
    for step, name in enumerate(("tiny", "other"), start=1):
        samples = [e for e in result.of_type("sample") if e["model"] == name]
        assert len(samples) == 12 and all(e["step"] == step for e in samples)
        length = [-abs(len(s["completion"]) - 10) / 10 for s in samples]
        vowel = [float(any(c in "aeiou" for c in s["completion"])) for s in samples]
        total = [2.0 * a + 0.5 * b for a, b in zip(length, vowel, strict=True)]
        for sample, expected in zip(samples, total, strict=True):
            assert sample["reward"] == pytest.approx(expected, abs=1e-5)
        values = scores[name]
        mean = sum(total) / len(total)
        assert values["eval/reward"] == pytest.approx(mean, abs=1e-5)
        assert values["eval/reward_std"] == pytest.approx(
            math.sqrt(sum((t - mean) ** 2 for t in total) / len(total)), abs=1e-5
        )
        assert values["eval/rewards/length"] == pytest.approx(sum(length) / len(length), abs=1e-5)
        assert values["eval/rewards/regex"] == pytest.approx(sum(vowel) / len(vowel), abs=1e-5)
        assert 0 < values["eval/completions/mean_length"] <= 12
    assert [s["completion"] for s in result.of_type("sample") if s["model"] == "tiny"] != [
        s["completion"] for s in result.of_type("sample") if s["model"] == "other"
    ]


def test_greedy_evaluation_gives_the_same_completions_twice(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    spec = _eval_spec(
        tiny_model,
        data_dir / "prompts.jsonl",
        [],
        do_sample=False,
        max_new_tokens=6,
        samples_per_model=6,
        max_samples=3,
    )
    spec.pop("models")
    spec["reward"] = [{"type": "rule", "rule": "contains"}]
    first, second = run_inprocess(spec, output="a"), run_inprocess(spec, output="b")
    assert _by_model(first).keys() == {"base_model"}
    assert len(first.of_type("sample")) == 3  # max_samples rows, one completion each
    assert [s["completion"] for s in first.of_type("sample")] == [s["completion"] for s in second.of_type("sample")]


def test_a_reward_model_cannot_be_evaluated_on_prompts(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from tests.tiny import build_tiny_model

    rm = build_tiny_model(tmp_path / "rm", "seqcls")
    spec = _eval_spec(tiny_model, data_dir / "prompts.jsonl", [("tiny", tiny_model), ("rm", rm)])
    spec["reward"] = [{"type": "rule", "rule": "contains"}]
    result = run_inprocess(spec)
    assert result.code == 1
    error = result.of_type("error")[0]
    assert error["code"] == "invalid_models" and "rm is a sequence classifier" in error["message"]


def test_models_are_refused_outside_evaluate(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    spec = _eval_spec(tiny_model, data_dir / "pref.jsonl", [("tiny", tiny_model)])
    spec["algorithm"] = "dpo"
    spec["hyperparameters"] = {}
    result = run_inprocess(spec)
    assert result.code == 1
    assert result.of_type("error")[0]["code"] == "invalid_spec"
    assert "models applies to evaluate only" in result.of_type("error")[0]["message"]


def test_the_base_model_must_come_first_as_the_reference(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    result = run_inprocess(_eval_spec(tiny_model, data_dir / "pref.jsonl", [("other", tmp_path)]))
    assert result.code == 1
    assert "models[0] must be the base model" in result.of_type("error")[0]["message"]
