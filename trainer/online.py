"""Where is the online rollout? The plumbing GRPO and PPO share: prompts, generation, scoring, log-probs.

- prompts: a prompt dataset encoded with trainer.data's encoder (one truncation policy for all);
- generation: `sample` draws the step's prompts (the same seeded data order as the offline
  algorithms) and samples completions for all of them in one batched `generate` call (`rollout`);
- scoring: the spec's reward (trainer.rewards) on decoded text, failures as `reward_failed`;
- log-probs of a rollout without gradients: the policy's (old) and the reference's
  (`reference_of`: a frozen copy, or the LoRA policy with its adapters disabled);
- `sample` events, so a user can read what the model is learning.

Several processes (`accelerate launch`): every process draws the same step's prompts and takes a
contiguous share of them (`local_share`), whole groups included; each completion row samples with a
seed of its data position (trainer.generation.row_seed), so a completion does not depend on which
process made it. The step functions run the bare (unwrapped) models, scale their losses by global
totals (`global_sum`), sum the gradients over processes (`sum_gradients`) before each optimizer
step, and gather rewards for advantages and metrics (`gather`). Only the main process writes events.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from trainer.config import GRPOConfig, PPOConfig
from trainer.data import DataError, encode_prompt, read_dataset
from trainer.formats import PromptExample
from trainer.generation import generate_completions, row_seed
from trainer.logprobs import completion_logprobs, grouped_completion_logprobs
from trainer.models import policy_tokenizer
from trainer.rewards import Reward, RewardError, build_reward
from trainer.run import Run, TrainError
from trainer.state import TrainState, draw, seed_everything

SAMPLE_EVERY = 10
"""Emit `sample` events (prompt, completion, rewards) at step 1 and every this many steps."""
SAMPLES_PER_EVENT = 2


# --- prompts -------------------------------------------------------------------------------------


@dataclass
class Prompts:
    """The prompt dataset: its examples (prompt + extra columns for the reward) and their token ids."""

    examples: list[PromptExample]
    ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.examples)


def start_online(run: Run) -> tuple[Any, Prompts]:
    """What GRPO and PPO start from: the seed, the policy's tokenizer and the encoded prompts."""
    world = run.accelerator.num_processes
    if run.config.batch_size % world:
        raise TrainError(
            "invalid_hyperparameters",
            f"batch_size {run.config.batch_size} must be a multiple of the {world} processes "
            "(each generates an equal share of the prompts)",
        )
    seed_everything(run.spec.seed)
    tokenizer = policy_tokenizer(run)
    examples: list[PromptExample] = read_dataset(run.spec.train_file, "prompt", "train")
    if not examples:
        raise DataError("the train file has no prompts")
    ids = [encode_prompt(tokenizer, e.prompt, run.config.max_prompt_length) for e in examples]
    run.data_report["train"] = {"rows": len(examples), "longest_prompt": max(len(p) for p in ids)}
    return tokenizer, Prompts(examples, ids)


# --- generation ----------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Generated sequences of one step; row i*G + g is completion g of prompt i."""

    input_ids: torch.Tensor  # (N, P + T): left-padded prompt, completion, right padding
    attention_mask: torch.Tensor  # (N, P + T)
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T): 1 up to and including the first EOS
    has_eos: torch.Tensor  # (N,) bool
    completions: list[str]
    sampler_logprobs: torch.Tensor | None = None
    """(N, T) the engine's log-probs of the drawn tokens at the sampling temperature (0 after the mask):
    the policy's log-probs of the rollout (equal to `batched_logprobs` in eval mode to ~1e-5 in fp32,
    tests/trainer/test_generation.py), so GRPO reusing a batch runs no separate "old" forward. PPO does
    not take them: its KL penalty compares them with the reference's full forward, and a difference of
    rounding (~1e-7 in fp32, more in bf16) between a cached decode and a full forward, whitened into
    the advantages, is noise the same kind of forward on both sides does not have (zero KL at step 1)."""

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.completion_ids.shape[1]


def sample(
    run: Run, state: TrainState, model: Any, tokenizer: Any, prompts: Prompts, num_generations: int
) -> tuple[list[PromptExample], Rollout]:
    """Draw the step's batch_size prompts (advancing the data position) and sample the completions of
    this process's share of them."""
    config = run.config
    assert isinstance(config, GRPOConfig | PPOConfig)
    start = state.consumed
    indices = draw(state, len(prompts), config.batch_size, run.spec.seed)
    share = local_share(run, len(indices))
    batch = rollout(
        model,
        tokenizer,
        [prompts.ids[indices[j]] for j in share],
        num_generations=num_generations,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        device=run.device,
        seeds=[row_seed(run.spec.seed, start + j, g) for j in share for g in range(num_generations)],
        engine=config.generation_engine,
    )
    return [prompts.examples[indices[j]] for j in share], batch


def local_share(run: Run, count: int) -> range:
    """The positions in a step's batch of `count` prompts that this process generates (contiguous)."""
    acc = run.accelerator
    size = count // acc.num_processes
    return range(acc.process_index * size, (acc.process_index + 1) * size)


@torch.no_grad()
def rollout(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    device: torch.device,
    seeds: Sequence[int] | None = None,
    engine: str = "cached",
    do_sample: bool = True,
) -> Rollout:
    """Sample `num_generations` completions of every prompt in one batched call of the generation engine.

    `seeds` (one per completion row, see trainer.generation.row_seed) make each completion independent
    of the batch it is generated in; `engine` is the config's generation_engine. Without `do_sample`
    decoding is greedy (the evaluate job's option), as temperature 0 is.
    """
    if not do_sample:
        temperature = 0.0
    stop_ids = eos_ids(tokenizer, model)
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id, device)  # (B, P)
    was_training = model.training
    model.eval()
    generated = generate_completions(
        model,
        prompt_ids,
        prompt_mask,
        num_generations=num_generations,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        stop_ids=stop_ids,
        pad_id=tokenizer.pad_token_id,
        seeds=seeds,
        engine=engine,
    )
    model.train(was_training)
    completion_ids = generated.completion_ids  # (B * G, T)
    mask, has_eos = completion_mask(completion_ids, stop_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = [
        tokenizer.decode(ids[: int(n)], skip_special_tokens=True)
        for ids, n in zip(completion_ids.tolist(), mask.sum(1).tolist(), strict=True)
    ]
    input_ids = torch.cat([prompt_ids.repeat_interleave(num_generations, dim=0), completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.repeat_interleave(num_generations, dim=0), mask], dim=1)
    sampler_logprobs = generated.logprobs * mask if generated.logprobs is not None else None
    return Rollout(input_ids, attention_mask, completion_ids, mask, has_eos, texts, sampler_logprobs)


def eos_ids(tokenizer: Any, model: Any) -> list[int]:
    """Every token that ends a completion: the tokenizer's EOS and the generation config's."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def completion_mask(completion_ids: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (N, T) that is 1 up to and including the first stop token, has_eos (N,))."""
    is_stop = torch.isin(completion_ids, torch.tensor(stop_ids, device=completion_ids.device))  # (N, T)
    has_eos = is_stop.any(dim=1)
    width = completion_ids.shape[1]
    first = torch.where(has_eos, is_stop.float().argmax(dim=1), torch.full_like(has_eos, width, dtype=torch.long))
    positions = torch.arange(width, device=completion_ids.device).unsqueeze(0)  # (1, T)
    return (positions <= first.unsqueeze(1)).long(), has_eos


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, P), attention mask (B, P)) of prompts padded on the left, so completions follow them."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


# --- scoring -------------------------------------------------------------------------------------


def load_reward(run: Run) -> Reward:
    """The spec's reward; a component that cannot be built fails the run as `reward_failed`."""
    try:
        return build_reward(run.spec.reward or [], device=run.device, trust_remote_code=run.spec.trust_remote_code)
    except RewardError as exc:
        raise TrainError("reward_failed", str(exc)) from exc


def score(
    reward: Reward, examples: Sequence[PromptExample], completions: Sequence[str], repeats: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rewards of the completions; each prompt's row is repeated for its `repeats` completions."""
    prompts = [e.prompt for e in examples for _ in range(repeats)]
    columns = [e.columns for e in examples for _ in range(repeats)]
    try:
        return reward(prompts, list(completions), columns)
    except RewardError as exc:
        raise TrainError("reward_failed", str(exc)) from exc


def sample_events(
    run: Run, step: int, examples: Sequence[PromptExample], batch: Rollout, total: torch.Tensor, parts: dict
) -> None:
    """A few (prompt, completion, rewards) triples at step 1 and every SAMPLE_EVERY steps."""
    if step != 1 and step % SAMPLE_EVERY != 0:
        return
    repeats = len(batch.completions) // len(examples)
    for i in range(min(SAMPLES_PER_EVENT, len(batch.completions))):
        run.events.emit(
            "sample",
            step=step,
            prompt=examples[i // repeats].prompt,
            completion=batch.completions[i],
            reward=total[i].item(),
            rewards={name: values[i].item() for name, values in parts.items()},
        )


# --- log-probs of a rollout ----------------------------------------------------------------------


@contextmanager
def reference_of(model: Any, ref_model: Any) -> Iterator[Any]:
    """The reference policy: `ref_model` when loaded, else `model` with its LoRA adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with model.disable_adapter():
            yield model


def reference_name(needed: bool, ref_model: Any) -> str:
    if not needed:
        return "none (beta = 0)"
    return "the base model with adapters disabled" if ref_model is None else "a frozen copy of the base model"


@torch.no_grad()
def batched_logprobs(model: Any, batch: Rollout, rows: int, temperature: float, group: int = 1) -> torch.Tensor:
    """completion_logprobs (N, T) over a whole rollout in chunks of `rows` sequences, without gradients.

    With `group` > 1 (GRPO: `rows` is a multiple of it) each group's shared prompt is forwarded once
    (trainer.logprobs.grouped_completion_logprobs)."""
    was_training = model.training
    model.eval()
    parts = [
        completion_logprobs(
            model,
            batch.input_ids[i : i + rows],
            batch.attention_mask[i : i + rows],
            batch.completion_ids[i : i + rows],
            temperature,
        )
        if group == 1
        else grouped_completion_logprobs(
            model,
            batch.input_ids[i : i + rows],
            batch.attention_mask[i : i + rows],
            batch.completion_ids[i : i + rows],
            group,
            temperature,
        )
        for i in range(0, batch.input_ids.shape[0], rows)
    ]
    model.train(was_training)
    return torch.cat(parts)


# --- several processes ---------------------------------------------------------------------------


def global_sum(run: Run, value: float) -> float:
    """`value` summed over the processes (itself on one process)."""
    if run.accelerator.num_processes == 1:
        return value
    return float(run.accelerator.reduce(torch.tensor([value], device=run.device), reduction="sum").item())


def gather(run: Run, values: torch.Tensor) -> torch.Tensor:
    """Every process's `values` (same shape on each) concatenated along dim 0 in process order."""
    if run.accelerator.num_processes == 1:
        return values
    return run.accelerator.gather(values.contiguous())


def reduce_metrics(run: Run, values: dict[str, float], summed: Sequence[str] = ()) -> dict[str, float]:
    """Metrics over all processes: the mean of each process's value, or the sum for the `summed` names
    (each process's share of a whole-batch quantity). Every process holds an equal share of the batch."""
    acc = run.accelerator
    if acc.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=run.device)
    total = acc.reduce(tensor, reduction="sum")
    return {k: v if k in summed else v / acc.num_processes for k, v in zip(keys, total.tolist(), strict=True)}


def sum_gradients(run: Run, *modules: Any) -> None:
    """Sum every trainable parameter's gradient over the processes, in one all-reduce.

    Each process's loss is its share of the global loss (divided by global totals), so the sum is the
    gradient one process would get on the whole batch. The step functions run the bare models (PPO's
    value head and the generation engines need them), so DDP's own hooks never fire.
    """
    if run.accelerator.num_processes == 1:
        return
    params = [p for module in modules for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
