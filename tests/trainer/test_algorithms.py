"""Each offline algorithm runs a few steps on the tiny model through the CLI and leaves usable checkpoints."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from tests.trainer.conftest import Result

EVENT_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "progress": {"step": int, "total_steps": int, "epoch": (int, float), "eta_seconds": (int, float)},
    "metrics": {"step": int, "values": dict},
    "checkpoint": {"step": int, "path": str, "kind": str, "metrics": dict},
    "log": {"level": str, "message": str},
    "sample": {},
    "done": {},
    "error": {"code": str, "message": str},
}
COMMON_METRICS = {"loss", "learning_rate", "grad_norm", "tokens_per_second", "samples_per_second", "step_time"}
DPO_METRICS = {
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
}


def assert_well_formed(result: Result, total_steps: int) -> None:
    assert result.code == 0, result.stderr[-3000:] + json.dumps(result.events[-3:])
    for event in result.events:
        fields = EVENT_FIELDS[event["type"]]
        for name, kind in fields.items():
            assert isinstance(event[name], kind), (name, event)
    assert result.events[-1] == {"type": "done"}
    progress = result.of_type("progress")
    assert [e["step"] for e in progress] == list(range(1, total_steps + 1))
    assert all(e["total_steps"] == total_steps for e in progress)
    losses = result.losses()
    assert losses and all(math.isfinite(v) for v in losses.values())
    for event in result.of_type("metrics"):
        assert all(isinstance(v, float | int) and math.isfinite(v) for v in event["values"].values())
    final = [e for e in result.of_type("checkpoint") if e["kind"] == "final"]
    assert len(final) == 1 and Path(final[0]["path"]) == (result.output / "final").resolve()


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str = "model.") -> None:
    shared = [k for k in after if k in before and k.startswith(prefix)]
    assert shared
    assert any(not torch.equal(before[k], after[k]) for k in shared)


def base_spec(tiny_model: Path, data_dir: Path, algorithm: str, train: str, **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "base_model": str(tiny_model),
        "train_file": str(data_dir / train),
        "hyperparameters": {
            "learning_rate": 1e-3,
            "batch_size": 2,
            "max_steps": 3,
            "max_length": 64,
            "max_prompt_length": 48,
            **hyper,
        },
    }


def test_dpo_cli_trains_logs_dpo_metrics_and_saves_a_loadable_model(
    run_cli: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    spec = base_spec(tiny_model, data_dir, "dpo", "pref.jsonl", micro_batch_size=1, save_every=2, eval_every=2)
    spec["eval_file"] = str(data_dir / "pref.jsonl")
    result = run_cli(spec)
    assert_well_formed(result, 3)
    train_metrics = result.of_type("metrics")[0]["values"]
    assert set(train_metrics) >= COMMON_METRICS | DPO_METRICS
    assert train_metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference at step 1
    evals = [e for e in result.of_type("metrics") if "eval/loss" in e["values"]]
    assert [e["step"] for e in evals] == [2, 3]
    assert {"eval/" + k for k in DPO_METRICS} <= set(evals[-1]["values"])

    intermediate = result.output / "checkpoints" / "step-00000002"
    assert (intermediate / "training_state" / "state.pt").is_file()
    final = result.output / "final"
    assert not (final / "training_state").exists()
    assert_changed(weights(tiny_model), weights(final))
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.vocab_size > 0
    info = json.loads((final / "alignd.json").read_text())
    assert info["algorithm"] == "dpo" and info["step"] == 3 and info["seed"] == 0
    assert info["hyperparameters"]["beta"] == 0.1 and len(info["dataset_sha256"]["train"]) == 64
    assert "eval/rewards/accuracies" in info["metrics"]
    assert (final / "README.md").read_text().startswith("---\n")
    assert (final / "tokenizer.json").is_file() and (final / "generation_config.json").is_file()


@pytest.mark.parametrize("loss_type", ["ipo", "hinge"])
def test_dpo_loss_variants_train_on_the_tiny_model(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, loss_type: str
) -> None:
    result = run_inprocess(base_spec(tiny_model, data_dir, "dpo", "pref_standard.jsonl", loss_type=loss_type))
    assert_well_formed(result, 3)
    assert_changed(weights(tiny_model), weights(result.output / "final"))


def test_dpo_reference_on_the_fly_gives_the_same_losses_as_precomputed(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    pre = run_inprocess(base_spec(tiny_model, data_dir, "dpo", "pref.jsonl"), output="pre")
    live = run_inprocess(
        base_spec(tiny_model, data_dir, "dpo", "pref.jsonl", precompute_ref_logps=False), output="live"
    )
    assert_well_formed(live, 3)
    assert pre.losses() == pytest.approx(live.losses(), rel=1e-4)


def test_dpo_lora_reference_is_computed_when_a_pair_is_first_used_and_kept(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    import torch

    lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    hyper = {"learning_rate": 1e-2, "max_steps": 2, "save_every": 1, "eval_every": 1}
    runs = {}
    for name, precompute in (("cached", True), ("live", False)):
        spec = base_spec(tiny_model, data_dir, "dpo", "pref.jsonl", precompute_ref_logps=precompute, **hyper)
        spec["lora"], spec["eval_file"] = lora, str(data_dir / "pref_standard.jsonl")
        runs[name] = run_inprocess(spec, output=name)
        assert_well_formed(runs[name], 2)
    cached = runs["cached"]
    assert any("computed when a pair is first used" in e["message"] for e in cached.of_type("log"))
    # the same reference (adapters disabled) whether kept or recomputed every step: the same losses
    assert cached.losses() == pytest.approx(runs["live"].losses(), rel=1e-5)
    evals = [e["values"]["eval/loss"] for e in cached.of_type("metrics") if "eval/loss" in e["values"]]
    live = [e["values"]["eval/loss"] for e in runs["live"].of_type("metrics") if "eval/loss" in e["values"]]
    assert evals == pytest.approx(live, rel=1e-5)
    # after step 1: the 2 pairs of step 1 and every eval pair (evaluated at step 1), nothing else
    extra = torch.load(
        cached.output / "checkpoints" / "step-00000001" / "training_state" / "state.pt", weights_only=True
    )["extra"]
    ref_train, ref_eval = extra["ref_train"], extra["ref_eval"]
    assert ref_train.shape == (6, 2) and int((~ref_train[:, 0].isnan()).sum()) == 2
    assert bool((ref_train[~ref_train[:, 0].isnan()] < 0).all())
    assert ref_eval.shape == (6, 2) and not bool(ref_eval.isnan().any())


def test_dpo_with_lora_saves_adapter_and_merged_model_that_load(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    from peft import AutoPeftModelForCausalLM

    spec = base_spec(tiny_model, data_dir, "dpo", "pref.jsonl", learning_rate=1e-2, precompute_ref_logps=False)
    spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "merge": True}
    result = run_inprocess(spec)
    assert_well_formed(result, 3)
    final = result.output / "final"
    info = json.loads((final / "alignd.json").read_text())
    assert info["adapter"] is True and info["merged_model"] == "merged"
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items())
    AutoPeftModelForCausalLM.from_pretrained(final)
    assert_changed(weights(tiny_model), weights(final / "merged"))
    assert result.losses()[1] == pytest.approx(math.log(2), abs=1e-5)  # adapters start at zero


def test_reward_cli_trains_a_sequence_classifier_that_loads_with_one_label(
    run_cli: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    spec = base_spec(tiny_model, data_dir, "reward", "pref.jsonl", center_rewards_coefficient=0.01)
    spec["eval_file"] = str(data_dir / "pref_standard.jsonl")
    result = run_cli(spec)
    assert_well_formed(result, 3)
    assert {"loss", "accuracy", "margin"} <= set(result.of_type("metrics")[0]["values"])
    assert {"eval/loss", "eval/accuracy", "eval/margin"} <= set(result.of_type("metrics")[-1]["values"])
    final = result.output / "final"
    assert_changed(weights(tiny_model), weights(final))
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    ids = torch.tensor([[5, 6, 7, model.config.pad_token_id], [5, 6, 7, 8]])
    assert model(input_ids=ids).logits.shape == (2, 1)


def test_sft_cli_trains_on_completions_and_saves_a_loadable_model(
    run_cli: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    result = run_cli(base_spec(tiny_model, data_dir, "sft", "sft.jsonl", lr_scheduler="cosine", warmup_ratio=0.34))
    assert_well_formed(result, 3)
    lrs = [e["values"]["learning_rate"] for e in result.of_type("metrics")]
    assert lrs[0] < lrs[1]  # warmup
    assert_changed(weights(tiny_model), weights(result.output / "final"))
    AutoModelForCausalLM.from_pretrained(result.output / "final")


def test_sft_with_packing_trains(run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path) -> None:
    result = run_inprocess(base_spec(tiny_model, data_dir, "sft", "sft.jsonl", packing=True, max_steps=2))
    assert_well_formed(result, 2)
    assert any("packed" in e["message"] for e in result.of_type("log"))
