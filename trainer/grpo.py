"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, §4).

Each step reads top to bottom:
load -> rollout (G completions per prompt in one batched `generate`) -> score (trainer.rewards)
-> group advantages -> old log-probs (only when num_iterations > 1) and reference log-probs
(only when beta > 0) -> clipped surrogate + beta * k3 KL, aggregated by `loss_type` -> update -> log/save.

Models: the policy; the reference only when beta > 0 (with LoRA it is the policy with adapters
disabled, so no second copy; without LoRA a frozen copy of the base model); reward models inside
trainer.rewards. Rewards score decoded text, so a reward model's tokenizer need not match the policy's.

Sizes: one step consumes `batch_size` prompts -> batch_size * G sequences; `micro_batch_size`
prompts (x G sequences) go through each forward/backward. Every loss variant's denominator covers the
whole step's batch (see trainer.losses.aggregate_token_loss), so accumulation does not change the
gradient. With num_iterations = k, one generated batch is used for k consecutive optimizer steps.

Where this departs from the paper:
- Loss aggregation defaults to DAPO's token-level mean (`loss_type="dapo"`); the paper's per-sequence
  mean is `loss_type="grpo"`.
- Advantages use the unbiased std plus eps = 1e-4 (as TRL); `scale_rewards="none"` is Dr. GRPO.
- Log-probs are of the temperature-scaled distribution the completions were sampled from.
- One process only for now: several processes (accelerate launch) are refused with a clear error.
- A resumed run regenerates its batch (the num_iterations reuse buffer is not checkpointed).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from transformers import GenerationConfig

from trainer.config import GRPOConfig
from trainer.data import DataError, read_dataset, tokenize_prompt
from trainer.engine import (
    Run,
    TrainError,
    chunks,
    draw,
    load_policy,
    peak_memory_mb,
    save_checkpoint,
    seed_everything,
    setup_training,
)
from trainer.formats import PromptExample, Text
from trainer.losses import aggregate_token_loss, clipped_policy_loss, group_advantages, kl_penalty, masked_mean
from trainer.models import load_model, load_tokenizer, resolve_dtype
from trainer.rewards import Reward, RewardError, build_reward

SAMPLE_EVERY = 10
"""Emit `sample` events (prompt, completion, rewards) at step 1 and every this many steps."""
SAMPLES_PER_EVENT = 2


# --- prompts -------------------------------------------------------------------------------------


def render_prompt(tokenizer: Any, prompt: Text) -> tuple[str, bool]:
    """(text, templated?): chat prompts through the chat template with the generation prompt, strings as is."""
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None):
            return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)), True
        return "".join(f"{m['role']}: {m['content']}\n" for m in prompt) + "assistant: ", False
    return prompt, False


def encode_prompts(tokenizer: Any, examples: Sequence[PromptExample], max_prompt_length: int) -> list[list[int]]:
    """Token ids of every prompt, cut from the left to max_prompt_length (the end of the prompt survives)."""
    out = []
    for example in examples:
        text, templated = render_prompt(tokenizer, example.prompt)
        ids = tokenize_prompt(tokenizer, text, templated)
        out.append(ids[-max_prompt_length:])
    return out


def read_prompts(path: str, name: str = "train") -> list[PromptExample]:
    """Prompt examples of a file; a preference or SFT file is refused with a message saying so."""
    examples = read_dataset(path, "prompt", name)
    if not examples:
        raise DataError(f"the {name} file has no prompts")
    return examples


# --- rollout -------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Generated sequences of one step; row i*G + g is completion g of prompt i."""

    input_ids: torch.Tensor  # (N, P + T): left-padded prompt, completion, right padding
    attention_mask: torch.Tensor  # (N, P + T)
    completion_ids: torch.Tensor  # (N, T)
    completion_mask: torch.Tensor  # (N, T): 1 up to and including the first EOS
    has_eos: torch.Tensor  # (N,) bool
    completions: list[str]

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.completion_ids.shape[1]


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
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


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
) -> Rollout:
    """Sample `num_generations` completions of every prompt in one batched `generate` call."""
    stop_ids = eos_ids(tokenizer, model)
    prompt_ids, prompt_mask = left_pad(prompts, tokenizer.pad_token_id, device)  # (B, P)
    generation = GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        max_new_tokens=max_new_tokens,
        num_return_sequences=num_generations,
        eos_token_id=stop_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    was_training = model.training
    model.eval()
    sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=generation)
    model.train(was_training)
    completion_ids = sequences[:, prompt_ids.shape[1] :]  # (B * G, T)
    mask, has_eos = completion_mask(completion_ids, stop_ids)
    completion_ids = completion_ids.masked_fill(mask == 0, tokenizer.pad_token_id)
    texts = [
        tokenizer.decode(ids[: int(n)], skip_special_tokens=True)
        for ids, n in zip(completion_ids.tolist(), mask.sum(1).tolist(), strict=True)
    ]
    input_ids = torch.cat([prompt_ids.repeat_interleave(num_generations, dim=0), completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask.repeat_interleave(num_generations, dim=0), mask], dim=1)
    return Rollout(input_ids, attention_mask, completion_ids, mask, has_eos, texts)


# --- log-probs -----------------------------------------------------------------------------------


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs (N, T) of the completion tokens under `model` at `temperature`.

    Positions are counted from the first real token so left-padded rows see the positions they were
    generated with; the LM head runs only on the T positions that predict completion tokens.
    """
    width = completion_ids.shape[1]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=width + 1
    ).logits[:, :-1, :]  # (N, T, V)
    return token_logprobs(logits, completion_ids, temperature)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at `token_ids`, (N, T, V) -> (N, T), without a full (N, T, V) log-softmax.

    log p(x) = logit_x - logsumexp(logits), with the logsumexp taken one sequence at a time: the
    vocabulary-sized temporaries then cover one row instead of the batch, which keeps peak memory down.
    """
    if temperature != 1.0:
        logits = logits / temperature
    logits = logits.float()
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)  # (N, T)
    normaliser = torch.stack([torch.logsumexp(row, dim=-1) for row in logits])  # (N, T)
    return picked - normaliser


@contextmanager
def reference_of(model: Any, ref_model: Any) -> Iterator[Any]:
    """The reference policy: `ref_model` when loaded, else `model` with its LoRA adapters disabled."""
    if ref_model is not None:
        yield ref_model
    else:
        with model.disable_adapter():
            yield model


@torch.no_grad()
def batched_logprobs(model: Any, batch: Rollout, rows: int, temperature: float) -> torch.Tensor:
    """completion_logprobs over a whole rollout in chunks of `rows` sequences, without gradients."""
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
        for i in range(0, batch.input_ids.shape[0], rows)
    ]
    model.train(was_training)
    return torch.cat(parts)


def load_reference(run: Run, config: GRPOConfig | Any, beta: float) -> Any:
    """A frozen copy of the base model when a reference is needed and LoRA cannot provide it; else None."""
    if beta == 0 or run.spec.lora is not None:
        return None
    ref: Any = load_model(run.spec.base_model, "causal", dtype=resolve_dtype(config.precision))
    return ref.to(run.device).eval().requires_grad_(False)


# --- scoring -------------------------------------------------------------------------------------


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


def reference_name(beta: float, ref_model: Any) -> str:
    if beta == 0:
        return "none (beta = 0)"
    return "the base model with adapters disabled" if ref_model is None else "a frozen copy of the base model"


def build_reward_or_fail(run: Run) -> Reward:
    try:
        return build_reward(run.spec.reward or [], device=run.device)
    except RewardError as exc:
        raise TrainError("reward_failed", str(exc)) from exc


def sample_events(
    run: Run, step: int, examples: Sequence[PromptExample], batch: Rollout, total: torch.Tensor, parts: dict
) -> None:
    """A few (prompt, completion, rewards) triples, so a user can read what the model is learning."""
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


def refuse_several_processes(run: Run) -> None:
    if run.accelerator.num_processes > 1:
        raise TrainError(
            "unsupported_configuration",
            f"{run.spec.algorithm} runs on one process for now; start it without accelerate launch (one GPU)",
        )


# --- training ------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One generated and scored step's worth of training data (reused num_iterations times)."""

    rollout: Rollout
    advantages: torch.Tensor  # (N,)
    old_logprobs: torch.Tensor | None  # (N, T); None when num_iterations == 1 (ratio = 1 at the update)
    ref_logprobs: torch.Tensor | None  # (N, T); None when beta == 0
    metrics: dict[str, float]


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, GRPOConfig)
    spec, events, device = run.spec, run.events, run.device
    refuse_several_processes(run)
    seed_everything(spec.seed)
    G = config.num_generations

    # 1. load: prompts, policy (+ optimizer, resumed state), reference, reward
    tokenizer = load_tokenizer(spec.base_model)
    examples = read_prompts(spec.train_file)
    prompt_ids = encode_prompts(tokenizer, examples, config.max_prompt_length)
    run.data_report["train"] = {"rows": len(examples), "longest_prompt": max(len(p) for p in prompt_ids)}
    model = load_policy(run, tokenizer, "causal")
    model, optimizer, scheduler, state, _ = setup_training(run, model, len(examples))
    ref_model = load_reference(run, config, config.beta)
    reward = build_reward_or_fail(run)
    total_steps = config.total_steps(len(examples))
    micro_rows = (config.micro_batch_size or config.batch_size) * G
    events.log(
        f"grpo: {len(examples)} prompts, {total_steps} steps of {config.batch_size} prompts x {G} completions, "
        f"reference: {reference_name(config.beta, ref_model)}"
    )

    def generate_batch(step: int) -> tuple[Batch, list[PromptExample]]:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        indices = draw(state, len(examples), config.batch_size, spec.seed)
        picked = [examples[i] for i in indices]
        batch = rollout(
            model,
            tokenizer,
            [prompt_ids[i] for i in indices],
            num_generations=G,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            device=device,
        )
        timings["time/generation"] = time.perf_counter() - t0

        # 2. score and group advantages
        t0 = time.perf_counter()
        rewards, parts = score(reward, picked, batch.completions, G)
        advantages = group_advantages(rewards, G, config.scale_rewards).to(device)
        timings["time/scoring"] = time.perf_counter() - t0
        if advantages.abs().max().item() == 0:
            events.log(
                f"step {step}: every completion got the same reward as the others of its group "
                f"({rewards[0].item():g} for the first): all advantages are zero, so this step learns nothing. "
                "A reward that never varies cannot teach; check the reward spec against real completions.",
                level="warning",
            )

        # 3. old log-probs (only to reuse the batch) and reference log-probs (only for the KL)
        t0 = time.perf_counter()
        old = batched_logprobs(model, batch, micro_rows, config.temperature) if config.num_iterations > 1 else None
        ref = None
        if config.beta > 0:
            with reference_of(model, ref_model) as reference:
                ref = batched_logprobs(reference, batch, micro_rows, config.temperature)
        timings["time/logprobs"] = time.perf_counter() - t0

        grouped = rewards.view(-1, G)
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": grouped.std(dim=1).mean().item(),
            **{f"rewards/{name}": values.mean().item() for name, values in parts.items()},
            "frac_reward_zero_std": (grouped.std(dim=1) == 0).float().mean().item(),
            "completions/mean_length": batch.completion_mask.sum(1).float().mean().item(),
            "completions/clipped_ratio": (~batch.has_eos).float().mean().item(),
            **timings,
        }
        if step == 1 or step % SAMPLE_EVERY == 0:
            sample_events(run, step, picked, batch, rewards, parts)
        return Batch(batch, advantages, old, ref, metrics), picked

    def update(batch: Batch) -> dict[str, float]:
        """4. clipped surrogate + beta * k3 KL over micro-batches; returns loss metrics (no optimizer step)."""
        data = batch.rollout
        rows = data.input_ids.shape[0]
        parts = list(chunks(list(range(rows)), micro_rows))
        num_tokens = float(data.completion_mask.sum().item())
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        for part in parts:
            idx = torch.tensor(part, device=device)
            mask = data.completion_mask[idx].float()
            logprobs = completion_logprobs(
                model, data.input_ids[idx], data.attention_mask[idx], data.completion_ids[idx], config.temperature
            )  # (b, T)
            old = batch.old_logprobs[idx] if batch.old_logprobs is not None else logprobs.detach()
            per_token, clipped = clipped_policy_loss(
                logprobs, old, batch.advantages[idx], config.epsilon_low, config.epsilon_high
            )
            if batch.ref_logprobs is not None:
                kl = kl_penalty(logprobs, batch.ref_logprobs[idx], "k3")
                per_token = per_token + config.beta * kl
                sums["kl"] += masked_mean(kl.detach(), mask).item() * len(part) / rows
            loss = aggregate_token_loss(
                per_token,
                mask,
                config.loss_type,
                num_sequences=rows,
                num_tokens=num_tokens,
                accumulation_steps=len(parts),
                max_completion_length=config.max_new_tokens,
            )
            loss.backward()
            sums["loss"] += loss.item()
            sums["clip_ratio"] += (clipped.float() * mask).sum().item() / max(num_tokens, 1.0)
        if config.beta == 0:
            del sums["kl"]
        return sums

    def save(kind: str) -> None:
        save_checkpoint(
            run,
            kind,
            state,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
        )

    # 5. the step loop
    model.train()
    started, first_step = time.perf_counter(), state.step
    batch: Batch | None = None
    while state.step < total_steps:
        step = state.step + 1
        t0 = time.perf_counter()
        reused = batch is not None and (step - 1) % config.num_iterations != 0
        if not reused or batch is None:
            batch, _ = generate_batch(step)
            step_metrics = dict(batch.metrics)
        else:
            step_metrics = {k: v for k, v in batch.metrics.items() if not k.startswith("time/")}
            step_metrics.update({"time/generation": 0.0, "time/scoring": 0.0, "time/logprobs": 0.0})
        t_update = time.perf_counter()
        loss_metrics = update(batch)
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
        if not (math.isfinite(loss_metrics["loss"]) and math.isfinite(grad_norm)):
            raise TrainError(
                "nan_loss",
                f"the loss or gradient became non-finite at step {step}: lower learning_rate "
                f"(now {config.learning_rate}) or keep max_grad_norm > 0",
            )
        lr = float(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step = step
        step_time = time.perf_counter() - t0
        rows = batch.rollout.input_ids.shape[0]
        values = {
            **loss_metrics,
            **step_metrics,
            "time/update": time.perf_counter() - t_update,
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "step_time": step_time,
            "samples_per_second": rows / step_time,
            "tokens_per_second": batch.rollout.attention_mask.sum().item() / step_time,
            "peak_memory_mb": peak_memory_mb(device),
        }
        state.metrics = values
        eta = (time.perf_counter() - started) / (step - first_step) * (total_steps - step)
        events.emit(
            "progress", step=step, total_steps=total_steps, epoch=round(state.epoch(len(examples)), 4), eta_seconds=eta
        )
        if step % config.logging_every == 0 or step == total_steps:
            events.emit("metrics", step=step, values=values)
        if config.save_every and step % config.save_every == 0 and step < total_steps:
            save("intermediate")
    save("final")
