"""How are completions sampled? The generation engines behind trainer.online's rollout.

`generate_completions` samples G completions of each left-padded prompt and returns their raw token
ids (N = B * G rows, prompt i's completions in rows i*G .. i*G + G-1). The engine is a config knob
(`generation_engine`):

- "cached" (default): a decoder over transformers' own `DynamicCache` and logits warpers. Each prompt
  is encoded once and its cache copied to its G completions (`batch_repeat_interleave`), instead of
  `generate(num_return_sequences=G)` encoding every prompt G times; rows that reached a stop token
  leave the batch (`batch_select_indices`), so the last long completion no longer drags finished
  ones through every decode step. Every row samples with its own `torch.Generator` when `seeds` are
  given, so a completion depends only on its prompt, its seed and the weights: not on which other
  prompts share its batch or its process (what lets GRPO/PPO on several processes reproduce one
  process). It also returns the sampler's log-probs of the drawn tokens.
- "generate": Hugging Face `generate` (the earlier path, kept as a fallback); global torch RNG.

Measured on SmolLM2-135M (bench/README.md, "Rollouts"): continuous batching (`generate_batch`) was
2.4x slower than `generate` on this CPU, and a decode step is ~75% matmuls, so neither it nor a
compiled static-cache step is used here.

Sampling is the one `generate` does: softmax(logits / temperature) cut to the top_p nucleus
(transformers' `TemperatureLogitsWarper` and `TopPLogitsWarper`), or the argmax when temperature is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

ENGINES = ("cached", "generate")


@dataclass
class Generated:
    """Raw completions of a batch of prompts: tokens after each row's first stop token are `pad_id`."""

    completion_ids: torch.Tensor  # (N, T), T <= max_new_tokens
    logprobs: torch.Tensor | None  # (N, T): the sampler's log p(token) at `temperature` (cached engine only)


def generate_completions(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: Sequence[int],
    pad_id: int,
    seeds: Sequence[int] | None = None,
    engine: str = "cached",
) -> Generated:
    """G completions of every left-padded prompt (B, P); `seeds` (one per completion row) fix the draws."""
    if engine == "generate":
        return _hf_generate(
            model, prompt_ids, prompt_mask, num_generations, max_new_tokens, temperature, top_p, stop_ids, pad_id
        )
    if engine != "cached":
        raise ValueError(f"unknown generation engine {engine!r}; choose one of {ENGINES}")
    return _cached_generate(
        model, prompt_ids, prompt_mask, num_generations, max_new_tokens, temperature, top_p, stop_ids, pad_id, seeds
    )


def row_seed(seed: int, position: int, generation: int) -> int:
    """The sampling seed of completion `generation` of the prompt drawn at data `position` (any process)."""
    return (seed * 1_000_003 + position) * 4099 + generation


# --- the cached engine ---------------------------------------------------------------------------


@torch.no_grad()
def _cached_generate(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: Sequence[int],
    pad_id: int,
    seeds: Sequence[int] | None,
) -> Generated:
    device = prompt_ids.device
    rows = prompt_ids.shape[0] * num_generations
    generators = _generators(seeds, rows, device)
    warpers = _warpers(temperature, top_p)
    stop = torch.tensor(list(stop_ids), device=device)

    # prefill each prompt once, then give each of its G completions a copy of its cache
    cache = DynamicCache()
    prompt_positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding: count from the first real token
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask,
        position_ids=prompt_positions,
        cache=cache,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(num_generations)
    logits = out.logits[:, -1].float().repeat_interleave(num_generations, dim=0)  # (N, V)
    mask = prompt_mask.repeat_interleave(num_generations, dim=0)  # (N, P)
    positions = mask.sum(dim=1, keepdim=True)  # (N, 1): the position of each row's next token

    tokens = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros((rows, max_new_tokens), device=device)
    active = torch.arange(rows, device=device)  # which completion rows are still in the batch
    width = max_new_tokens
    for t in range(max_new_tokens):
        picked, picked_logprobs = _sample(logits, warpers, temperature, [generators[i] for i in active.tolist()])
        tokens[active, t] = picked
        logprobs[active, t] = picked_logprobs
        running = ~torch.isin(picked, stop)
        if not bool(running.any()):
            width = t + 1
            break
        if t == max_new_tokens - 1:
            break
        if not bool(running.all()):  # finished rows leave the batch and its cache
            keep = running.nonzero().squeeze(1)
            active, picked, mask, positions = active[keep], picked[keep], mask[keep], positions[keep]
            cache.batch_select_indices(keep)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(input_ids=picked.unsqueeze(1), attention_mask=mask, position_ids=positions, cache=cache)
        logits = out.logits[:, -1].float()
        positions = positions + 1
    return Generated(tokens[:, :width], logprobs[:, :width])


def _generators(seeds: Sequence[int] | None, rows: int, device: torch.device) -> list[torch.Generator]:
    """One generator per row: from `seeds`, else seeded from the global torch RNG (so seed_everything holds)."""
    if seeds is None:
        seeds = torch.randint(0, 2**62, (rows,)).tolist()
    if len(seeds) != rows:
        raise ValueError(f"{len(seeds)} seeds for {rows} completion rows")
    return [torch.Generator(device=device).manual_seed(int(s) % 2**63) for s in seeds]


def _warpers(temperature: float, top_p: float) -> LogitsProcessorList:
    warpers = LogitsProcessorList()
    if temperature > 0 and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if temperature > 0 and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def _sample(
    logits: torch.Tensor, warpers: LogitsProcessorList, temperature: float, generators: list[torch.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (n,), their log-probs (n,) under softmax(logits / temperature)) for n rows of logits (n, V)."""
    full = torch.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)
    if temperature == 0:
        picked = logits.argmax(dim=-1)
    else:
        # these warpers ignore the context ids: an empty (n, 0) one
        no_context = cast(torch.LongTensor, logits.new_zeros((logits.shape[0], 0), dtype=torch.long))
        probs = torch.softmax(warpers(no_context, logits), dim=-1)  # (n, V), zero outside the nucleus
        picked = torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators, strict=True)])
    return picked, full.gather(-1, picked.unsqueeze(1)).squeeze(1)


# --- Hugging Face generate (fallback) ------------------------------------------------------------


@torch.no_grad()
def _hf_generate(
    model: Any,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop_ids: Sequence[int],
    pad_id: int,
) -> Generated:
    sampling = temperature > 0
    if not sampling:  # generate refuses num_return_sequences > 1 when greedy: repeat the prompts instead
        prompt_ids = prompt_ids.repeat_interleave(num_generations, dim=0)
        prompt_mask = prompt_mask.repeat_interleave(num_generations, dim=0)
    generation = GenerationConfig(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=0 if sampling else None,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_generations if sampling else 1,
        eos_token_id=list(stop_ids),
        pad_token_id=pad_id,
    )
    sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation)
    return Generated(sequences[:, prompt_ids.shape[1] :], None)
