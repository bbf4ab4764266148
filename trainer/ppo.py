"""PPO for language models with a KL-penalised reward (Ziegler et al. 2019, arXiv:1909.08593;
Stiennon et al. 2020, arXiv:2009.01325; Ouyang et al. 2022, arXiv:2203.02155), after the structure of
"The N+ implementation details of RLHF with PPO" (Huang et al. 2024, arXiv:2403.17031).

Each step reads top to bottom:
load -> rollout (one completion per prompt, trainer.grpo.rollout) -> score (trainer.rewards; minus
missing_eos_penalty for completions that never ended) -> log-probs and values of the rollout, reference
log-probs -> per-token reward = -kl_coef * KL_t, plus the score on the last completion token -> GAE,
whitened advantages -> ppo_epochs x num_minibatches of clipped policy + clipped value updates -> log/save.

Four roles: policy, reference (a frozen copy, or the LoRA base with adapters disabled), reward
(trainer.rewards: models and rules on decoded text), value.

Value model (`value_model`):
- "head" (default): a linear head on the policy's final hidden states. One trunk serves both, so PPO
  costs about what GRPO does in memory; the value loss also shapes the trunk (weighted by vf_coef).
  This is the choice of the original lm-human-preferences code's shared variant and of TRL's old
  value-head models; the head starts at zero so early values do not disturb the advantages.
- "separate": a second copy of the policy's base model with a scalar head (a sequence classifier),
  fully trained. It must share the policy's tokenizer because it predicts a value for every policy
  token, which is why it is built from the policy's base rather than from the reward model.

Departures / choices:
- One optimizer step per minibatch; the learning-rate schedule advances once per rollout.
- The adaptive KL controller (Ziegler et al. 2019, §2.2) updates kl_coef after every rollout from the
  mean summed KL per sequence; kl_coef is saved with the training state.
- One process only for now (as GRPO).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from trainer.config import PPOConfig
from trainer.engine import (
    Run,
    TrainError,
    TrainState,
    build_optimizer,
    build_scheduler,
    chunks,
    draw,
    load_policy,
    load_training_state,
    peak_memory_mb,
    save_checkpoint,
    seed_everything,
)
from trainer.grpo import (
    SAMPLE_EVERY,
    Rollout,
    batched_logprobs,
    build_reward_or_fail,
    encode_prompts,
    load_reference,
    read_prompts,
    reference_of,
    refuse_several_processes,
    rollout,
    sample_events,
    score,
    token_logprobs,
)
from trainer.losses import clipped_policy_loss, gae, kl_penalty, masked_mean, masked_whiten, value_loss
from trainer.models import load_model, load_tokenizer, resolve_dtype, unwrap_base


class AdaptiveKLController:
    """Ziegler et al. 2019 (arXiv:1909.08593, §2.2): beta_{t+1} = beta_t * (1 + K_beta * e_t),
    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2), K_beta = n_steps / horizon."""

    def __init__(self, kl_coef: float, target: float | None, horizon: int) -> None:
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        proportional_error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + proportional_error * n_steps / self.horizon


# --- the value function --------------------------------------------------------------------------


def trunk_of(model: Any) -> Any:
    """The transformer body of a causal LM or sequence classifier (e.g. LlamaModel), LoRA layers included."""
    base = unwrap_base(model)
    return getattr(base, base.base_model_prefix)


class ValueFunction(nn.Module):
    """Per-token values V(s_t) of the states that predict each completion token."""

    def __init__(self, config: PPOConfig, run: Run, policy: Any) -> None:
        super().__init__()
        self.shared = config.value_model == "head"
        if self.shared:
            hidden = unwrap_base(policy).config.get_text_config().hidden_size
            self.head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
            self.model: Any = None
        else:
            self.model = load_model(run.spec.base_model, "seqcls", dtype=resolve_dtype(config.precision))
            if not hasattr(self.model, "score"):
                raise TrainError(
                    "unsupported_configuration",
                    "value_model 'separate' needs a decoder base model with a score head; use value_model 'head'",
                )
            self.head = self.model.score
        self.to(run.device)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).squeeze(-1).float()


def forward_policy_and_values(
    policy: Any,
    value_fn: ValueFunction,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs (N, T), values (N, T)) of the completion tokens; one trunk pass when shared."""
    width = completion_ids.shape[1]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
    hidden = trunk_of(policy)(**inputs).last_hidden_state[:, -width - 1 : -1]  # (N, T, H)
    logits = unwrap_base(policy).get_output_embeddings()(hidden)  # (N, T, V)
    logprobs = token_logprobs(logits, completion_ids, temperature)
    if not value_fn.shared:
        hidden = trunk_of(value_fn.model)(**inputs).last_hidden_state[:, -width - 1 : -1]
    return logprobs, value_fn.values(hidden)


# --- training ------------------------------------------------------------------------------------


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, PPOConfig)
    spec, events, device = run.spec, run.events, run.device
    refuse_several_processes(run)
    seed_everything(spec.seed)

    # 1. load: prompts, policy + value, optimizer and (resumed) state, reference, reward
    tokenizer = load_tokenizer(spec.base_model)
    examples = read_prompts(spec.train_file)
    prompt_ids = encode_prompts(tokenizer, examples, config.max_prompt_length)
    run.data_report["train"] = {"rows": len(examples), "longest_prompt": max(len(p) for p in prompt_ids)}
    model = load_policy(run, tokenizer, "causal")
    value_fn = ValueFunction(config, run, model)
    trained = nn.ModuleList([model, value_fn])
    total_steps = config.total_steps(len(examples))
    optimizer = build_optimizer(trained, config)
    scheduler = build_scheduler(optimizer, config, total_steps)
    state, kl_ctl = (
        TrainState(),
        AdaptiveKLController(config.kl_coef, config.adaptive_kl_target, config.adaptive_kl_horizon),
    )
    if run.resume is not None:
        state, extra = load_training_state(run.resume, optimizer, scheduler)
        value_fn.load_state_dict(extra["value"])
        kl_ctl.value = extra["kl_coef"]
        events.log(f"resumed from {run.resume} at step {state.step}")
    needs_reference = config.kl_coef > 0 or config.adaptive_kl_target is not None
    ref_model = load_reference(run, config, 1.0 if needs_reference else 0.0)
    reward = build_reward_or_fail(run)
    minibatch = config.batch_size // config.num_minibatches
    micro = min(config.micro_batch_size or minibatch, minibatch)
    events.log(
        f"ppo: {len(examples)} prompts, {total_steps} rollouts of {config.batch_size}, "
        f"{config.ppo_epochs} epochs x {config.num_minibatches} minibatches, value model: {config.value_model}"
    )

    @torch.no_grad()
    def rollout_values(batch: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        parts = [
            forward_policy_and_values(
                model,
                value_fn,
                batch.input_ids[i : i + micro],
                batch.attention_mask[i : i + micro],
                batch.completion_ids[i : i + micro],
                config.temperature,
            )
            for i in range(0, batch.input_ids.shape[0], micro)
        ]
        model.train()
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def save(kind: str) -> None:
        save_checkpoint(
            run,
            kind,
            state,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
            extra_state={"value": value_fn.state_dict(), "kl_coef": kl_ctl.value},
        )

    trained.train()
    started, first_step = time.perf_counter(), state.step
    while state.step < total_steps:
        step = state.step + 1
        t0 = time.perf_counter()
        timings: dict[str, float] = {}

        # 2. rollout
        indices = draw(state, len(examples), config.batch_size, spec.seed)
        picked = [examples[i] for i in indices]
        batch = rollout(
            model,
            tokenizer,
            [prompt_ids[i] for i in indices],
            num_generations=1,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            device=device,
        )
        mask = batch.completion_mask.float()  # (N, T)
        timings["time/generation"] = time.perf_counter() - t0

        # 3. score (with the missing-EOS penalty)
        t1 = time.perf_counter()
        scores, parts = score(reward, picked, batch.completions, 1)
        scores = scores.to(device)
        if config.missing_eos_penalty is not None:
            scores = scores - config.missing_eos_penalty * (~batch.has_eos).float()
        timings["time/scoring"] = time.perf_counter() - t1

        # 4. log-probs and values of the rollout, reference log-probs
        t1 = time.perf_counter()
        old_logprobs, old_values = rollout_values(batch)
        if ref_model is not None or (needs_reference and spec.lora is not None):
            with reference_of(model, ref_model) as reference:
                ref_logprobs = batched_logprobs(reference, batch, micro, config.temperature)
        else:
            ref_logprobs = old_logprobs
        timings["time/logprobs"] = time.perf_counter() - t1

        # 5. per-token rewards: -kl_coef * KL_t everywhere, + score at the last completion token; GAE
        kl = kl_penalty(old_logprobs, ref_logprobs, config.kl_estimator) * mask  # (N, T)
        non_score_reward = -kl_ctl.value * kl
        rewards = non_score_reward.clone()
        last = (mask.sum(dim=1) - 1).long()  # (N,)
        rewards[torch.arange(len(last), device=device), last] += scores
        if config.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, old_values * mask, mask, config.gamma, config.lam)
        advantages = masked_whiten(advantages, mask) * mask

        # 6. PPO epochs over minibatches
        t1 = time.perf_counter()
        stats: dict[str, list[float]] = {k: [] for k in ("pg", "vf", "pg_clip", "vf_clip", "approxkl", "vpred")}
        grad_norm = 0.0
        rows = batch.input_ids.shape[0]
        for _ in range(config.ppo_epochs):
            order = torch.randperm(rows).tolist()
            for mb in chunks(order, minibatch):
                mb_tokens = float(mask[mb].sum().item())
                for part in chunks(mb, micro):
                    idx = torch.tensor(part, device=device)
                    m = mask[idx]
                    logprobs, vpred = forward_policy_and_values(
                        model,
                        value_fn,
                        batch.input_ids[idx],
                        batch.attention_mask[idx],
                        batch.completion_ids[idx],
                        config.temperature,
                    )
                    pg_losses, pg_clipped = clipped_policy_loss(
                        logprobs, old_logprobs[idx], advantages[idx], config.cliprange, config.cliprange
                    )
                    vf_losses, vf_clipped = value_loss(vpred, old_values[idx], returns[idx], config.cliprange_value)
                    pg_loss = (pg_losses * m).sum() / max(mb_tokens, 1.0)
                    vf_loss = (vf_losses * m).sum() / max(mb_tokens, 1.0)
                    (pg_loss + config.vf_coef * vf_loss).backward()
                    share = len(part) / len(mb)
                    with torch.no_grad():
                        stats["pg"].append(pg_loss.item())
                        stats["vf"].append(vf_loss.item())
                        stats["pg_clip"].append(masked_mean(pg_clipped.float(), m).item() * share)
                        stats["vf_clip"].append(masked_mean(vf_clipped.float(), m).item() * share)
                        approxkl = 0.5 * masked_mean((logprobs - old_logprobs[idx]) ** 2, m)
                        stats["approxkl"].append(approxkl.item() * share)
                        stats["vpred"].append(masked_mean(vpred, m).item() * share)
                params = [p for p in trained.parameters() if p.requires_grad]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm or float("inf")))
                if not math.isfinite(grad_norm):
                    raise TrainError(
                        "nan_loss",
                        f"the gradient norm became {grad_norm} at step {step}: lower learning_rate "
                        f"(now {config.learning_rate}) or keep max_grad_norm > 0",
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        timings["time/update"] = time.perf_counter() - t1
        lr = float(scheduler.get_last_lr()[0])
        scheduler.step()
        state.step = step

        # 7. log, adapt the KL coefficient, save
        updates = config.ppo_epochs * config.num_minibatches
        mean_kl = kl.sum(dim=1).mean().item()
        step_time = time.perf_counter() - t0
        values = {
            "loss/policy": sum(stats["pg"]) / len(stats["pg"]),
            "loss/value": sum(stats["vf"]) / len(stats["vf"]),
            "objective/kl": mean_kl,
            "objective/scores": scores.mean().item(),
            "objective/non_score_reward": non_score_reward.sum(dim=1).mean().item(),
            "objective/rlhf_reward": scores.mean().item() + non_score_reward.sum(dim=1).mean().item(),
            "policy/clipfrac": sum(stats["pg_clip"]) / updates,
            "policy/approxkl": sum(stats["approxkl"]) / updates,
            "val/clipfrac": sum(stats["vf_clip"]) / updates,
            "val/vpred": sum(stats["vpred"]) / updates,
            "val/mean": masked_mean(old_values, mask).item(),
            "val/var": masked_mean((old_values - masked_mean(old_values, mask)) ** 2, mask).item(),
            "val/returns": masked_mean(returns, mask).item(),
            "kl_coef": kl_ctl.value,
            "reward": scores.mean().item(),
            **{f"rewards/{name}": v.mean().item() for name, v in parts.items()},
            "completions/mean_length": mask.sum(dim=1).mean().item(),
            "completions/clipped_ratio": (~batch.has_eos).float().mean().item(),
            **timings,
            "learning_rate": lr,
            "grad_norm": grad_norm,
            "step_time": step_time,
            "samples_per_second": rows / step_time,
            "tokens_per_second": batch.attention_mask.sum().item() / step_time,
            "peak_memory_mb": peak_memory_mb(device),
        }
        values["loss"] = values["loss/policy"] + config.vf_coef * values["loss/value"]
        kl_ctl.update(mean_kl, rows)
        state.metrics = values
        eta = (time.perf_counter() - started) / (step - first_step) * (total_steps - step)
        events.emit(
            "progress", step=step, total_steps=total_steps, epoch=round(state.epoch(len(examples)), 4), eta_seconds=eta
        )
        if step % config.logging_every == 0 or step == total_steps:
            events.emit("metrics", step=step, values=values)
        if step == 1 or step % SAMPLE_EVERY == 0:
            sample_events(run, step, picked, batch, scores, parts)
        if config.save_every and step % config.save_every == 0 and step < total_steps:
            save("intermediate")
    save("final")
