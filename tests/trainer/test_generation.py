"""The cached generation engine: one prefill per prompt, finished rows dropped, the same distribution as
`generate`, seeds that fix each completion whatever its batch, and log-probs the training forward agrees with."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from trainer.generation import generate_completions
from trainer.logprobs import completion_logprobs
from trainer.models import load_model, load_tokenizer
from trainer.online import left_pad, rollout

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def loaded(tiny: Path) -> tuple[Any, Any]:
    return load_tokenizer(str(tiny)), load_model(str(tiny)).eval()


def prompts_of(tokenizer: Any, *texts: str) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] for t in texts]


def test_each_prompt_is_encoded_once_and_finished_rows_leave_the_batch(loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    shapes: list[tuple[int, int]] = []
    forward = model.forward

    def recording(*args: Any, **kwargs: Any) -> Any:
        shapes.append(tuple(kwargs["input_ids"].shape))
        return forward(*args, **kwargs)

    model.forward = recording
    try:
        ids, mask = left_pad(prompts_of(tokenizer, "hello", "a longer prompt"), tokenizer.pad_token_id, CPU)
        # half the vocabulary stops a row, so rows finish at different steps
        stop = list(range(0, len(tokenizer), 2))
        out = generate_completions(
            model, ids, mask, num_generations=4, max_new_tokens=12, temperature=1.0, top_p=1.0,
            stop_ids=stop, pad_id=tokenizer.pad_token_id, seeds=list(range(8)),
        )  # fmt: skip
    finally:
        model.forward = forward  # type: ignore[method-assign]
    assert shapes[0] == (2, ids.shape[1])  # one prefill of the 2 prompts, not of 2 x 4 rows
    batch_sizes = [rows for rows, width in shapes[1:]]
    assert all(width == 1 for _, width in shapes[1:])
    assert batch_sizes == sorted(batch_sizes, reverse=True) and batch_sizes[-1] < 8
    # a row ends at its first stop token: pad after it
    for row in out.completion_ids.tolist():
        ends = [i for i, t in enumerate(row) if t in set(stop)]
        if ends:
            assert all(t == tokenizer.pad_token_id for t in row[ends[0] + 1 :])


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.8)])
def test_the_first_token_follows_the_tempered_nucleus_distribution(
    loaded: tuple[Any, Any], temperature: float, top_p: float
) -> None:
    tokenizer, model = loaded
    peaked = copy.deepcopy(model)  # random weights give a near-uniform next token: sharpen it so errors show
    with torch.no_grad():
        peaked.lm_head.weight.mul_(12)
    ids, mask = left_pad(prompts_of(tokenizer, "hi"), tokenizer.pad_token_id, CPU)
    draws = 4000
    out = generate_completions(
        peaked, ids, mask, num_generations=draws, max_new_tokens=1, temperature=temperature, top_p=top_p,
        stop_ids=[tokenizer.eos_token_id], pad_id=tokenizer.pad_token_id, seeds=list(range(draws)),
    )  # fmt: skip
    with torch.no_grad():
        logits = peaked(input_ids=ids).logits[:, -1]

    def distribution(t: float, p: float) -> torch.Tensor:
        return torch.softmax(LogitsProcessorList([TemperatureLogitsWarper(t), TopPLogitsWarper(p)])(None, logits), -1)[
            0
        ]

    expected = distribution(temperature, top_p)
    seen = torch.bincount(out.completion_ids[:, 0], minlength=expected.shape[0]).float() / draws
    assert (seen[expected == 0] == 0).all()  # nothing outside the nucleus
    assert 0.5 * (seen - expected).abs().sum().item() < 0.06  # total variation (sampling noise ~0.03)
    # the check can fail: another temperature's distribution lies well outside it
    assert 0.5 * (distribution(temperature * 1.5, top_p) - expected).abs().sum().item() > 0.1


def test_a_completion_depends_on_its_seed_not_on_the_batch_it_is_sampled_in(loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    alone = prompts_of(tokenizer, "what is two plus two")
    batch = prompts_of(tokenizer, "a much longer prompt that pads the other one", "what is two plus two")
    kwargs: dict[str, Any] = {
        "num_generations": 3, "max_new_tokens": 10, "temperature": 1.0, "top_p": 0.9, "device": CPU,
    }  # fmt: skip
    one = rollout(model, tokenizer, alone, seeds=[7, 8, 9], **kwargs)
    two = rollout(model, tokenizer, batch, seeds=[1, 2, 3, 7, 8, 9], **kwargs)
    again = rollout(model, tokenizer, alone, seeds=[7, 8, 9], **kwargs)
    other = rollout(model, tokenizer, alone, seeds=[10, 11, 12], **kwargs)
    assert one.completions == two.completions[3:] == again.completions
    assert one.completions != other.completions
    assert len(set(one.completions)) > 1  # the three seeds drew different completions


def test_without_seeds_the_global_torch_seed_fixes_the_completions(loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    prompts = prompts_of(tokenizer, "hello", "there")
    kwargs: dict[str, Any] = {
        "num_generations": 2, "max_new_tokens": 8, "temperature": 1.0, "top_p": 1.0, "device": CPU,
    }  # fmt: skip
    torch.manual_seed(3)
    first = rollout(model, tokenizer, prompts, **kwargs).completions
    torch.manual_seed(3)
    assert rollout(model, tokenizer, prompts, **kwargs).completions == first


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_sampler_log_probs_match_the_training_forward(loaded: tuple[Any, Any], temperature: float) -> None:
    tokenizer, model = loaded
    prompts = prompts_of(tokenizer, "hello", "a longer prompt here")
    batch = rollout(
        model, tokenizer, prompts, num_generations=3, max_new_tokens=12, temperature=temperature,
        top_p=1.0, device=CPU, seeds=list(range(6)),
    )  # fmt: skip
    assert batch.sampler_logprobs is not None
    with torch.no_grad():
        recomputed = completion_logprobs(
            model, batch.input_ids, batch.attention_mask, batch.completion_ids, temperature or 1.0
        )
    torch.testing.assert_close(recomputed * batch.completion_mask, batch.sampler_logprobs, atol=1e-4, rtol=1e-4)
    if temperature == 0.0:  # greedy: every completion of a prompt is the same, and each token is the argmax
        assert batch.completions[0] == batch.completions[1] == batch.completions[2]


def test_greedy_cached_engine_reproduces_greedy_generate(loaded: tuple[Any, Any]) -> None:
    tokenizer, model = loaded
    prompts = prompts_of(tokenizer, "hello", "a longer prompt here")
    kwargs: dict[str, Any] = {
        "num_generations": 2, "max_new_tokens": 10, "temperature": 0.0, "top_p": 1.0, "device": CPU,
    }  # fmt: skip
    cached = rollout(model, tokenizer, prompts, engine="cached", **kwargs)
    reference = rollout(model, tokenizer, prompts, engine="generate", **kwargs)
    assert cached.completions == reference.completions
    assert torch.equal(cached.completion_mask, reference.completion_mask)
