"""Evaluating models through the service: a DPO job's output and its base model are scored on the
same pairs, then on prompts with a rule, by evaluate jobs submitted with the CLI (from a JSON file)
and the client, run by the real embedded worker and trainer on the tiny model (`alignd serve`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from client import Client
from tests.live import LiveServer, live_server
from tests.worker.conftest import short_preference_pairs

SIZES = {"max_length": 128, "max_prompt_length": 96}


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    with live_server("embedded-real", tmp_path_factory.mktemp("live-eval"), tiny_model_dir=tiny_model_dir) as live:
        yield live
        print(live.tail())


def cli(server: LiveServer, *args: str) -> str:
    result = CliRunner().invoke(app, list(args), env={**server.env, "COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.slow
def test_a_dpo_checkpoint_and_its_base_model_are_evaluated_on_pairs_and_prompts_by_a_real_worker(
    real_server: LiveServer, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(short_preference_pairs(16))
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"What is {a}+{a}?", "answer": str(2 * a)} for a in range(1, 5)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = real_server.model
    with Client(real_server.url, api_key=real_server.key) as alignd:
        pair_set = alignd.datasets.upload(pairs, name="pairs")
        prompt_set = alignd.datasets.upload(prompts, name="prompts")
        dpo = alignd.jobs.create(
            algorithm="dpo",
            base_model=base,
            dataset_id=pair_set.id,
            hyperparameters={"max_steps": 8, "batch_size": 2, "learning_rate": 1e-3, **SIZES},
        )
        dpo = alignd.jobs.wait(dpo.id, timeout=300)
        assert dpo.status == "succeeded", dpo.error
        tuned = f"job:{dpo.id}"

        request = tmp_path / "evaluate.json"
        request.write_text(
            json.dumps(
                {
                    "algorithm": "evaluate",
                    "base_model": base,
                    "models": [tuned],
                    "dataset_id": pair_set.id,
                    "hyperparameters": {"max_samples": 16, "beta": 0.1, **SIZES},
                }
            )
        )
        on_pairs = json.loads(cli(real_server, "jobs", "create", "--file", str(request), "--json"))
        on_prompts = alignd.jobs.create(
            algorithm="evaluate",
            base_model=base,
            models=[tuned],
            dataset_id=prompt_set.id,
            reward=[
                {"type": "rule", "rule": "contains", "column": "answer"},
                {"type": "rule", "rule": "regex", "pattern": "[0-9]"},
            ],
            hyperparameters={"num_generations": 2, "max_new_tokens": 8, **SIZES},
        )
        pairs_done = alignd.jobs.wait(on_pairs["id"], timeout=300)
        prompts_done = alignd.jobs.wait(on_prompts.id, timeout=300)
        pair_series = alignd.jobs.metrics(pairs_done.id).series
        prompt_events = list(alignd.jobs.events(prompts_done.id))
        pair_checkpoints = alignd.jobs.checkpoints(pairs_done.id)

    assert pairs_done.status == "succeeded", pairs_done.error
    assert pairs_done.output_checkpoint_id is None and pair_checkpoints == []
    results = pairs_done.results or {}
    assert set(results) == {base, tuned}
    before, after = results[base], results[tuned]
    assert before["eval/rewards/accuracies"] == 0.0 and before["eval/rewards/margins"] == 0.0
    assert after["eval/rewards/accuracies"] > 0.5 and after["eval/rewards/margins"] > 0.0
    assert [step for step, _ in pair_series["eval/rewards/accuracies"]] == [1, 2]
    assert pair_series["eval/rewards/margins"][1][1] == pytest.approx(after["eval/rewards/margins"])

    shown = cli(real_server, "jobs", "get", pairs_done.id)
    assert base in shown and tuned in shown and "rewards/accuracies" in shown

    assert prompts_done.status == "succeeded", prompts_done.error
    assert set(prompts_done.results or {}) == {base, tuned}
    for ref, values in (prompts_done.results or {}).items():
        assert {"eval/reward", "eval/reward_std", "eval/rewards/contains", "eval/rewards/regex"} <= set(values), ref
        assert values["eval/reward"] == pytest.approx(values["eval/rewards/contains"] + values["eval/rewards/regex"])
    samples = [e.data for e in prompt_events if e.type == "sample"]
    assert {s["model"] for s in samples} == {base, tuned}
    for sample in samples:
        digit = float(any(c.isdigit() for c in sample["completion"]))
        assert sample["rewards"]["regex"] == digit
