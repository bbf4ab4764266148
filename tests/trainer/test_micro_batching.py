"""How a step is cut into passes on CPU, and gradient checkpointing "auto" (trainer.packing, trainer.config)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.tiny import build_tiny_model
from tests.trainer.conftest import Result
from tests.trainer.test_algorithms import base_spec
from tests.trainer.test_packing import PAD, _model, _pairs
from trainer import packing
from trainer.config import DPOConfig, activation_bytes_per_token, auto_checkpoints
from trainer.dpo import concatenated_logps, pair_metrics
from trainer.models import enable_gradient_checkpointing
from trainer.packing import checkpoint_rule, examples_per_pass, pair_batch, preference_size


@pytest.fixture(scope="module")
def tiny_seqcls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_seqcls") / "model", "seqcls")


def _run(device: str, **hyper: Any) -> Any:
    logs: list[str] = []
    config = DPOConfig(batch_size=8, **hyper)
    events = SimpleNamespace(log=logs.append)
    return SimpleNamespace(config=config, device=torch.device(device), events=events, logs=logs)


def test_cpu_runs_one_example_per_pass_unless_the_user_sized_the_passes() -> None:
    assert examples_per_pass(_run("cpu")) == 1
    assert examples_per_pass(_run("cuda")) == 8  # GPUs keep batched passes
    assert examples_per_pass(_run("cpu", micro_batch_size=4)) == 4
    assert examples_per_pass(_run("cpu", max_tokens_per_batch=4096)) == 8  # the budget cuts, up to micro_batch


RUNS = {"dpo": "pref.jsonl", "reward": "pref_standard.jsonl", "sft": "sft.jsonl"}


@pytest.mark.parametrize("algorithm", list(RUNS))
def test_one_example_per_cpu_pass_gives_the_batched_run_s_losses_and_gradient_norms(
    run_inprocess: Callable[..., Result], tiny_model: Path, tiny_seqcls: Path, data_dir: Path, algorithm: str
) -> None:
    model = tiny_seqcls if algorithm == "reward" else tiny_model

    def series(output: str, **more: Any) -> list[float]:
        hyper = {"batch_size": 4, "max_steps": 3, "gradient_checkpointing": False, **more}
        result = run_inprocess(base_spec(model, data_dir, algorithm, RUNS[algorithm], **hyper), output=output)
        assert result.code == 0, result.events[-3:]
        return [e["values"][k] for e in result.of_type("metrics") for k in ("loss", "grad_norm")]

    default = series("default")  # on CPU: 4 passes of one example
    batched = series("batched", micro_batch_size=4)  # one pass of 4 examples
    assert len(default) == 6  # 3 steps
    assert default == pytest.approx(batched, rel=1e-4, abs=1e-5)


def test_auto_checkpoints_exactly_the_passes_whose_activations_pass_half_the_free_memory(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_model, "causal", lora=True)
    enable_gradient_checkpointing(model)
    model.train()  # transformers checkpoints training forwards only
    checkpointed: list[int] = []
    for layer in model.get_base_model().model.layers:  # count the layers that ran checkpointed
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, _f=inner, **k: checkpointed.append(1) or _f(*a, **k)
    pairs = _pairs(seed=3)  # 3 pairs of 2 sequences each
    sizes = [preference_size(p) for p in pairs]
    c = model.config
    per_token = activation_bytes_per_token(c.hidden_size, c.intermediate_size, c.num_hidden_layers, 4)
    reserve = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    budget_tokens = 30  # half the free memory holds 30 tokens' activations
    monkeypatch.setattr(packing, "free_memory_bytes", lambda run: reserve + 2 * budget_tokens * per_token)
    run = _run("cpu", gradient_checkpointing="auto")
    before = checkpoint_rule(run, model, sizes, packed=False)
    assert before is not None and "gradient_checkpointing auto" in run.logs[0]
    ref = torch.tensor([[-30.0, -40.0]])
    grads: dict[bool, dict[str, torch.Tensor]] = {}
    for i, size in enumerate(sizes):
        expected = auto_checkpoints(size.tokens, per_token, reserve + 2 * budget_tokens * per_token - reserve)
        assert expected == (size.tokens > budget_tokens)
        checkpointed.clear()
        model.zero_grad(set_to_none=True)
        before([i])
        logps, lengths = concatenated_logps(model, pair_batch([pairs[i]], PAD, False))
        pair_metrics(DPOConfig(), logps, lengths, ref)[0].backward()
        assert len(checkpointed) == (len(model.get_base_model().model.layers) * 2 if expected else 0), size
        grads.setdefault(expected, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert set(grads) == {True, False}  # the pairs fall on both sides of the budget
    # the same pass checkpointed or not gives the same gradients
    long = max(range(len(sizes)), key=lambda i: sizes[i].tokens)
    for checkpointing in (False, True):
        for layer in model.get_base_model().model.layers:
            layer.gradient_checkpointing = checkpointing
        model.zero_grad(set_to_none=True)
        logps, lengths = concatenated_logps(model, pair_batch([pairs[long]], PAD, False))
        pair_metrics(DPOConfig(), logps, lengths, ref)[0].backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name, grad in grads[True].items():
        torch.testing.assert_close(grad, grads[False][name], rtol=1e-5, atol=1e-6)


def test_true_and_false_keep_their_meaning_and_auto_trains_the_same_losses(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def losses(output: str, setting: bool | str) -> dict[int, float]:
        spec = base_spec(tiny_model, data_dir, "dpo", "pref.jsonl", batch_size=4, gradient_checkpointing=setting)
        result = run_inprocess(spec, output=output)
        assert result.code == 0, result.events[-3:]
        auto_logged = any("gradient_checkpointing auto" in e["message"] for e in result.of_type("log"))
        assert auto_logged == (setting == "auto")
        return result.losses()

    off, on = losses("off", False), losses("on", True)
    monkeypatch.setattr(packing, "free_memory_bytes", lambda run: 0)  # every pass over the budget
    squeezed = losses("squeezed", "auto")
    assert off == pytest.approx(on, rel=1e-4, abs=1e-5)
    assert squeezed == pytest.approx(off, rel=1e-4, abs=1e-5)
