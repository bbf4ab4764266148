"""Which forward passes a GRPO or PPO step runs (issue 13): none that repeat what the sampler computed.

- GRPO at num_iterations = 1 runs no "old" pass (the ratio's denominator is the update forward's own
  detached log-probs) and at beta = 0 loads no reference model and runs no reference pass;
- the update (and the old and reference passes) forwards each group's prompt once for its G rows;
- with num_iterations > 1 the old log-probs are the cached sampler's, so no no-grad pass over the
  rollout runs at all, and the losses are those of the explicit pass, to float tolerance;
- PPO at its defaults (one epoch of one micro-batch, no dropout): the update's forward, run before the
  advantages, gives the rollout's log-probs and values; the reference's is the only no-grad pass.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import trainer.grpo
import trainer.ppo
from tests.trainer.online import of_type, run_trainer
from trainer.logprobs import completion_logprobs, grouped_completion_logprobs
from trainer.models import load_model, load_tokenizer
from trainer.online import rollout

REWARD = [{"type": "rule", "rule": "regex", "pattern": "[aeiou]"}]


def spec(algorithm: str, model: Path, data: Path, **hyper: Any) -> dict[str, Any]:
    sizes = {"batch_size": 2, "num_generations": 4} if algorithm == "grpo" else {"batch_size": 4}
    return {
        "algorithm": algorithm,
        "base_model": str(model),
        "train_file": str(data),
        "reward": REWARD,
        "seed": 0,
        "hyperparameters": {
            **sizes,
            "max_new_tokens": 8,
            "max_steps": 3,
            "learning_rate": 1e-3,
            "max_prompt_length": 64,
            "max_length": 128,
            "precision": "fp32",
            **hyper,
        },
    }


def counting(
    monkeypatch: pytest.MonkeyPatch, module: Any, name: str, calls: list[str], only_no_grad: bool = False
) -> None:
    """Record a call of `module.name` (under no_grad only, if asked) in `calls`."""
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not only_no_grad or not torch.is_grad_enabled():
            calls.append(name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def without_sampler_outputs(monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    """Make `module.sample` drop the sampler's log-probs: the step must run the explicit old pass."""
    original = module.sample

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        picked, batch = original(*args, **kwargs)
        return picked, dataclasses.replace(batch, sampler_logprobs=None)

    monkeypatch.setattr(module, "sample", wrapper)


def losses(events: list[dict[str, Any]], *names: str) -> list[float]:
    """The named metrics of every step, flattened: step 1's, then step 2's, ..."""
    return [m["values"][n] for m in of_type(events, "metrics") for n in names]


def test_grpo_at_its_defaults_loads_no_reference_and_runs_no_pass_besides_sampling_and_the_update(
    tmp_path: Path, tiny: Path, prompts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    counting(monkeypatch, trainer.grpo, "batched_logprobs", calls)
    counting(monkeypatch, trainer.grpo, "load_reference", calls)
    counting(monkeypatch, trainer.grpo, "completion_logprobs", calls)
    counting(monkeypatch, trainer.grpo, "grouped_completion_logprobs", calls)
    code, events, _ = run_trainer(tmp_path, spec("grpo", tiny, prompts))  # beta and num_iterations at defaults
    assert code == 0, events[-1]
    # one update forward per step (one micro-batch), each prompt once for its group, nothing else
    assert calls == ["grouped_completion_logprobs"] * 3
    assert any("reference: none (beta = 0)" in e["message"] for e in of_type(events, "log"))
    assert "kl" not in of_type(events, "metrics")[0]["values"]


def test_a_groups_prompt_forwarded_once_gives_the_log_probs_and_gradients_of_whole_rows(tiny: Path) -> None:
    tokenizer, model = load_tokenizer(str(tiny)), load_model(str(tiny))
    texts = ["hello", "a longer prompt here", "x"]  # unequal lengths: left padding
    batch = rollout(
        model, tokenizer, [tokenizer(t)["input_ids"] for t in texts], num_generations=4, max_new_tokens=10,
        temperature=1.0, top_p=1.0, device=torch.device("cpu"), seeds=list(range(12)),
    )  # fmt: skip
    model.train()
    weights = torch.randn(batch.completion_mask.shape, generator=torch.Generator().manual_seed(0))
    weights = weights * batch.completion_mask
    results = []
    for fn, extra in ((completion_logprobs, ()), (grouped_completion_logprobs, (4,))):
        model.zero_grad()
        logprobs = fn(model, batch.input_ids, batch.attention_mask, batch.completion_ids, *extra)
        (logprobs * weights).sum().backward()
        results.append((logprobs * batch.completion_mask, [p.grad.clone() for p in model.parameters()]))
    (whole, whole_grads), (grouped, grouped_grads) = results
    torch.testing.assert_close(grouped, whole, atol=1e-5, rtol=1e-5)
    for a, b in zip(grouped_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_grpo_losses_are_the_same_with_the_shared_prompt_forward_and_with_whole_rows(
    tmp_path: Path, tiny: Path, prompts: Path
) -> None:
    """Gradient checkpointing takes the whole-row forward (it drops the KV cache); the math is the same."""
    hyper = {"beta": 0.04, "num_iterations": 2, "max_steps": 4}
    code, shared, _ = run_trainer(tmp_path, spec("grpo", tiny, prompts, **hyper), name="shared")
    assert code == 0, shared[-1]
    code, whole, _ = run_trainer(tmp_path, spec("grpo", tiny, prompts, gradient_checkpointing=True, **hyper))
    assert code == 0, whole[-1]
    names = ("loss", "kl", "clip_ratio", "grad_norm")
    assert losses(shared, *names) == pytest.approx(losses(whole, *names), abs=1e-5)


def test_grpo_reusing_a_batch_takes_the_samplers_log_probs_as_old_ones_with_the_same_losses(
    tmp_path: Path, tiny: Path, prompts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hyper = {"num_iterations": 2, "max_steps": 4, "epsilon_low": 0.02, "epsilon_high": 0.02}
    calls: list[str] = []
    counting(monkeypatch, trainer.grpo, "batched_logprobs", calls)
    code, events, _ = run_trainer(tmp_path, spec("grpo", tiny, prompts, **hyper), name="sampler")
    assert code == 0, events[-1]
    assert calls == []  # the old pass would be one call per generated batch

    without_sampler_outputs(monkeypatch, trainer.grpo)
    code, explicit, _ = run_trainer(tmp_path, spec("grpo", tiny, prompts, **hyper), name="explicit")
    assert code == 0, explicit[-1]
    assert calls == ["batched_logprobs"] * 2  # steps 1 and 3 generate
    got, want = losses(events, "loss", "clip_ratio"), losses(explicit, "loss", "clip_ratio")
    assert got == pytest.approx(want, abs=1e-5)
    assert any(c > 0 for c in got[1::2])  # the reused batch's ratios moved away from 1 and were clipped


def test_ppo_at_its_defaults_runs_one_forward_backward_and_one_reference_pass_with_the_same_losses(
    tmp_path: Path, tiny: Path, prompts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One epoch of one micro-batch: the update's forward, run first, gives the rollout's log-probs and
    values, so no no-grad pass of the policy runs; the losses are those of the separate pass."""
    calls: list[str] = []
    counting(monkeypatch, trainer.ppo, "forward_policy_and_values", calls)
    counting(monkeypatch, trainer.ppo, "batched_logprobs", calls)
    code, events, _ = run_trainer(tmp_path, spec("ppo", tiny, prompts), name="one")
    assert code == 0, events[-1]
    assert calls == ["forward_policy_and_values", "batched_logprobs"] * 3
    assert any("1 epochs x 1 minibatches" in e["message"] for e in of_type(events, "log"))

    calls.clear()
    monkeypatch.setattr(trainer.ppo.PPOStep, "one_update_pass", lambda self, batch: False)
    code, separate, _ = run_trainer(tmp_path, spec("ppo", tiny, prompts), name="separate")
    assert code == 0, separate[-1]
    assert calls == ["forward_policy_and_values", "batched_logprobs", "forward_policy_and_values"] * 3
    names = ("loss/policy", "loss/value", "objective/kl", "policy/approxkl", "val/mean", "grad_norm")
    assert losses(events, *names) == pytest.approx(losses(separate, *names), abs=1e-5)


def test_ppo_with_lora_dropout_keeps_the_separate_pass(
    tmp_path: Path, tiny: Path, prompts: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    counting(monkeypatch, trainer.ppo, "forward_policy_and_values", calls, only_no_grad=True)
    lora_spec = spec("ppo", tiny, prompts, max_steps=1)
    lora_spec["lora"] = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]}
    code, events, _ = run_trainer(tmp_path, lora_spec)
    assert code == 0, events[-1]
    assert calls == ["forward_policy_and_values"]
