"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300, §4).

Each step reads top to bottom (`GRPOStep`):
rollout (G completions per prompt in one batched `generate`, trainer.online) -> score (trainer.rewards)
-> group advantages -> old log-probs (only when num_iterations > 1) and reference log-probs
(only when beta > 0) -> clipped surrogate + beta * k3 KL, aggregated by `loss_type` -> update.
trainer.loop runs the steps, logs them and saves the checkpoints.

Forward passes per step: the sampler's (prefill + one decode step per token) and one forward + backward
per micro-batch in the update, nothing else at the defaults. Every pass over the rollout forwards each
group's prompt once for its G completions (trainer.logprobs.grouped_completion_logprobs), except the
update under gradient checkpointing, which forwards whole rows. With num_iterations = 1 the "old" policy
is the current one, so the ratio's denominator is the update forward's own detached log-probs (no
pass; TRL does the same); with num_iterations > 1 the old log-probs are the sampler's (the cached
engine returns them; one no-grad pass with the `generate` engine). A reference forward runs only when
beta > 0 (default 0, TRL's default: no reference model is loaded at all).

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
- Several processes (accelerate launch) split each step's prompts, whole groups per process; rewards
  are gathered so advantages and metrics cover the whole batch, and losses are divided by global
  totals with gradients summed (trainer.online), so two processes compute what one would.
- A resumed run regenerates its batch (the num_iterations reuse buffer is not checkpointed).

Evaluation (eval_file + eval_every): trainer.online_eval generates for held-out prompts and scores them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from trainer.checkpoints import Checkpointer
from trainer.config import GRPOConfig
from trainer.logprobs import completion_logprobs, grouped_completion_logprobs
from trainer.loop import StepResult, Updater, start_training, train_loop
from trainer.losses import aggregate_token_loss, clipped_policy_loss, group_advantages, kl_penalty, masked_mean
from trainer.models import load_policy, load_reference
from trainer.online import (
    Prompts,
    Rollout,
    batched_logprobs,
    gather,
    global_sum,
    load_reward,
    reference_name,
    reference_of,
    sample,
    sample_events,
    score,
    start_online,
    sum_gradients,
)
from trainer.online_eval import load_eval_prompts, online_eval_fn
from trainer.rewards import Reward
from trainer.run import Run
from trainer.state import TrainState, chunks


@dataclass
class Batch:
    """One generated and scored step's worth of training data (reused num_iterations times)."""

    rollout: Rollout
    advantages: torch.Tensor  # (N,)
    old_logprobs: torch.Tensor | None  # (N, T); None when num_iterations == 1 (ratio = 1 at the update)
    ref_logprobs: torch.Tensor | None  # (N, T); None when beta == 0
    metrics: dict[str, float]


class GRPOStep:
    """The step function: a new batch every num_iterations steps, then one update on it."""

    def __init__(self, run: Run, model: Any, ref_model: Any, tokenizer: Any, prompts: Prompts, reward: Reward) -> None:
        assert isinstance(run.config, GRPOConfig)
        self.run, self.config = run, run.config
        self.model, self.ref_model, self.tokenizer = model, ref_model, tokenizer
        self.prompts, self.reward = prompts, reward
        self.batch: Batch | None = None

    def __call__(self, state: TrainState, updater: Updater) -> StepResult:
        step = state.step + 1
        if self.batch is None or (step - 1) % self.config.num_iterations == 0:
            self.batch = self.generate(state, step)
            step_metrics = dict(self.batch.metrics)
        else:
            step_metrics = {k: v for k, v in self.batch.metrics.items() if not k.startswith("time/")}
            step_metrics.update({"time/generation": 0.0, "time/scoring": 0.0, "time/logprobs": 0.0})
        t0 = time.perf_counter()
        loss_metrics = self.update(self.batch, updater)
        sum_gradients(self.run, self.model)
        updater.step()
        data = self.batch.rollout
        return StepResult(
            {**loss_metrics, **step_metrics, "time/update": time.perf_counter() - t0},
            samples=int(global_sum(self.run, data.input_ids.shape[0])),
            tokens=int(global_sum(self.run, data.attention_mask.sum().item())),
        )

    def generate(self, state: TrainState, step: int) -> Batch:
        """1. rollout, 2. score and group advantages, 3. old and reference log-probs."""
        config, G, run = self.config, self.config.num_generations, self.run
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        picked, batch = sample(run, state, self.model, self.tokenizer, self.prompts, G)
        timings["time/generation"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        local_rewards, local_parts = score(self.reward, picked, batch.completions, G)
        # the whole batch's rewards (every process's share, in order): groups never span processes,
        # but scale_rewards="batch" and the metrics need all of them
        rewards = gather(run, local_rewards.to(run.device)).cpu()
        parts = {name: gather(run, values.to(run.device)).cpu() for name, values in local_parts.items()}
        first = run.accelerator.process_index * len(local_rewards)
        all_advantages = group_advantages(rewards, G, config.scale_rewards)
        advantages = all_advantages[first : first + len(local_rewards)].to(run.device)
        timings["time/scoring"] = time.perf_counter() - t0
        if all_advantages.abs().max().item() == 0:
            run.events.log(
                f"step {step}: every completion got the same reward as the others of its group "
                f"({rewards[0].item():g} for the first): all advantages are zero, so this step learns nothing. "
                "A reward that never varies cannot teach; check the reward spec against real completions.",
                level="warning",
            )

        # old log-probs only to reuse the batch (the sampler's when it has them: no forward), reference
        # log-probs only for the KL
        t0 = time.perf_counter()
        rows = config.micro_batch_sequences
        old = None
        if config.num_iterations > 1:
            old = batch.sampler_logprobs
            if old is None:
                old = batched_logprobs(self.model, batch, rows, config.temperature, G)
        ref = None
        if config.beta > 0:
            with reference_of(self.model, self.ref_model) as reference:
                ref = batched_logprobs(reference, batch, rows, config.temperature, G)
        timings["time/logprobs"] = time.perf_counter() - t0

        grouped = rewards.view(-1, G)
        lengths = gather(run, batch.completion_mask.sum(1).float())
        clipped = gather(run, (~batch.has_eos).float())
        metrics = {
            "reward": rewards.mean().item(),
            "reward_std": grouped.std(dim=1).mean().item(),
            **{f"rewards/{name}": values.mean().item() for name, values in parts.items()},
            "frac_reward_zero_std": (grouped.std(dim=1) == 0).float().mean().item(),
            "completions/mean_length": lengths.mean().item(),
            "completions/clipped_ratio": clipped.mean().item(),
            **timings,
        }
        sample_events(run, step, picked, batch, local_rewards, local_parts)
        return Batch(batch, advantages, old, ref, metrics)

    def logprobs(
        self, model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_ids: torch.Tensor
    ) -> torch.Tensor:
        """Per-token log-probs (n, T) of whole groups of rows, each group's prompt forwarded once
        (trainer.logprobs.grouped_completion_logprobs) unless gradient checkpointing is on (it drops the
        KV cache the completions attend to), then every row is forwarded whole."""
        if self.config.gradient_checkpointing and model.training:
            return completion_logprobs(model, input_ids, attention_mask, completion_ids, self.config.temperature)
        return grouped_completion_logprobs(
            model, input_ids, attention_mask, completion_ids, self.config.num_generations, self.config.temperature
        )

    def update(self, batch: Batch, updater: Updater) -> dict[str, float]:
        """4. clipped surrogate + beta * k3 KL, back-propagated over micro-batches; returns loss metrics.

        Denominators are the whole batch's over all processes, and each process's loss metrics are its
        share of the batch's: they are summed over processes at the end.
        """
        config, data, run = self.config, batch.rollout, self.run
        local_rows = data.input_ids.shape[0]
        rows = local_rows * run.accelerator.num_processes
        parts = list(chunks(list(range(local_rows)), config.micro_batch_sequences))
        num_tokens = global_sum(run, float(data.completion_mask.sum().item()))
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        for part in parts:
            idx = torch.tensor(part, device=self.run.device)
            mask = data.completion_mask[idx].float()
            logprobs = self.logprobs(
                self.model, data.input_ids[idx], data.attention_mask[idx], data.completion_ids[idx]
            )
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
                accumulation_steps=len(parts) * run.accelerator.num_processes,
                max_completion_length=config.max_new_tokens,
            )
            updater.backward(loss)
            sums["loss"] += loss.item()
            sums["clip_ratio"] += (clipped.float() * mask).sum().item() / max(num_tokens, 1.0)
        if config.beta == 0:
            del sums["kl"]
        return {name: global_sum(run, value) for name, value in sums.items()}


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, GRPOConfig)
    tokenizer, prompts = start_online(run)
    model = load_policy(run, tokenizer, "causal")
    training = start_training(run, model, len(prompts))
    ref_model = load_reference(run) if config.beta > 0 and run.spec.lora is None else None
    reward = load_reward(run)
    run.events.log(
        f"grpo: {len(prompts)} prompts, {config.total_steps(len(prompts))} steps of {config.batch_size} prompts "
        f"x {config.num_generations} completions, reference: {reference_name(config.beta > 0, ref_model)}"
    )
    # the bare policy: generation needs it, and gradients are summed by sum_gradients, not DDP
    step = GRPOStep(run, model, ref_model, tokenizer, prompts, reward)
    eval_prompts = load_eval_prompts(run, tokenizer)
    evaluate = None
    if eval_prompts is not None:
        evaluate = online_eval_fn(run, model, tokenizer, eval_prompts, reward, training.state)
    checkpointer = Checkpointer(run, training, tokenizer)
    train_loop(run, training, step, checkpointer, eval_fn=evaluate, eval_every=config.eval_every)
