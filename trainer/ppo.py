"""PPO for language models with a KL-penalised reward (Ziegler et al. 2019, arXiv:1909.08593;
Stiennon et al. 2020, arXiv:2009.01325; Ouyang et al. 2022, arXiv:2203.02155), after the structure of
"The N+ implementation details of RLHF with PPO" (Huang et al. 2024, arXiv:2403.17031).

Each step reads top to bottom (`PPOStep`):
rollout (one completion per prompt, trainer.online) -> score (trainer.rewards; minus
missing_eos_penalty for completions that never ended) -> log-probs and values of the rollout, reference
log-probs -> per-token reward = -kl_coef * KL_t, plus the score on the last completion token -> GAE,
whitened advantages -> ppo_epochs x num_minibatches of clipped policy + clipped value updates.
trainer.loop runs the steps, logs them and saves the checkpoints.

Four roles: policy, reference (a frozen copy, or the LoRA base with adapters disabled), reward
(trainer.rewards: models and rules on decoded text), value.

Passes per step at the defaults (value head, ppo_epochs 1, one minibatch of one micro-batch, no
dropout): the sampler's; one no-grad forward of the reference; one forward + backward of the policy
trunk, whose forward, run before the advantages, also gives the rollout's log-probs and the head's
values (the "old" ones: at one update they are the current ones). Otherwise one more no-grad forward
over the rollout gives them, and the update runs one forward + backward per micro-batch. `ppo_epochs` = k multiplies
the last by k: the default is 1, as verl (`ppo_epochs`) and OpenRLHF (`max_epochs`), where TRL's old
PPOTrainer used 4 (bench/README.md, "Online steps": 4 epochs made PPO's update 3.5x GRPO's). The old
log-probs are not the sampler's (as GRPO's are when it reuses a batch): they feed the KL penalty against
the reference's full forward, so both must be the same kind of forward (identical at step 1; a cached
decode differs by rounding, which whitening of near-zero rewards blows up into noise).

Value model (`value_model`):
- "head" (default): a linear head on the policy's final hidden states. One trunk serves both, so PPO
  costs about what GRPO does in memory; the value loss also shapes the trunk (weighted by vf_coef).
  This is the choice of the original lm-human-preferences code's shared variant and of TRL's old
  value-head models; the head starts at zero so early values do not disturb the advantages.
- "separate": a second copy of the policy's base model with a scalar head (a sequence classifier),
  fully trained. It must share the policy's tokenizer because it predicts a value for every policy
  token, which is why it is built from the policy's base rather than from the reward model. It costs a
  second trunk in every pass (the rollout pass and each update micro-batch) and, fully trained in fp32,
  16 bytes per parameter more (weights, gradient, two AdamW moments): ~2.1 GB for SmolLM2-135M.

Departures / choices:
- One optimizer step per minibatch; the learning-rate schedule advances once per rollout.
- The adaptive KL controller (Ziegler et al. 2019, §2.2) updates kl_coef after every rollout from the
  mean summed KL per sequence; kl_coef is saved with the training state.
- Several processes (accelerate launch): each rolls out its share of the prompts; reward and advantage
  whitening, minibatch token counts and metrics are taken over all processes and gradients are summed
  (trainer.online), so with num_minibatches = 1 two processes compute what one would. With more
  minibatches each process shuffles its own share into them: the same estimator, another partition.
- Evaluation (eval_file + eval_every) generates for held-out prompts and scores them (trainer.online_eval);
  the value model plays no part in it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from torch import nn

from trainer.checkpoints import Checkpointer
from trainer.config import PPOConfig
from trainer.logprobs import token_logprobs
from trainer.loop import StepResult, Updater, start_training, train_loop
from trainer.losses import clipped_policy_loss, gae, kl_penalty, masked_mean, masked_whiten, value_loss
from trainer.models import load_model, load_policy, load_reference, resolve_dtype, unwrap_base
from trainer.online import (
    Prompts,
    Rollout,
    batched_logprobs,
    global_sum,
    load_reward,
    reduce_metrics,
    reference_of,
    sample,
    sample_events,
    score,
    start_online,
    sum_gradients,
)
from trainer.online_eval import load_eval_prompts, online_eval_fn
from trainer.rewards import Reward
from trainer.run import Run, TrainError
from trainer.state import TrainState, chunks


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


def whiten(run: Run, values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """trainer.losses.masked_whiten with the mean and variance of every process's masked values."""
    if run.accelerator.num_processes == 1:
        return masked_whiten(values, mask, shift_mean)
    count = global_sum(run, mask.sum().item())
    mean = global_sum(run, (values * mask).sum().item()) / max(count, 1.0)
    var = global_sum(run, (((values - mean) ** 2) * mask).sum().item()) / max(count, 1.0)
    whitened = (values - mean) / math.sqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def needs_reference(config: PPOConfig) -> bool:
    """A reference policy is needed for the KL penalty: a fixed kl_coef > 0 or an adaptive one."""
    return config.kl_coef > 0 or config.adaptive_kl_target is not None


def has_dropout(*modules: nn.Module) -> bool:
    """Whether any dropout is active in training: a Dropout module with p > 0 (LoRA's among them) or an
    attention dropout in a transformers config."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                return True
            if float(getattr(getattr(m, "config", None), "attention_dropout", 0.0) or 0.0) > 0:
                return True
    return False


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
            self.model = load_model(
                run.spec.base_model,
                "seqcls",
                dtype=resolve_dtype(config.precision),
                trust_remote_code=run.spec.trust_remote_code,
            )
            if not hasattr(self.model, "score"):
                raise TrainError(
                    "unsupported_configuration",
                    "value_model 'separate' needs a decoder base model with a score head; use value_model 'head'",
                )
            self.head = self.model.score
        self.to(run.device)

    def values(self, hidden: torch.Tensor) -> torch.Tensor:
        # The shared head is kept in fp32 (stable value learning) while a bf16 trunk feeds it bf16
        # hidden states: cast them to the head's dtype (found on a GPU: bf16 PPO failed with a dtype error).
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()


def forward_policy_and_values(
    policy: Any, value_fn: ValueFunction, batch: Rollout, rows: Any, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-token log-probs (n, T), values (n, T)) of the completion tokens of `rows` of the rollout.

    One trunk pass when the value head is shared with the policy.
    """
    completion_ids = batch.completion_ids[rows]
    width = completion_ids.shape[1]
    attention_mask = batch.attention_mask[rows]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    inputs = {"input_ids": batch.input_ids[rows], "attention_mask": attention_mask, "position_ids": position_ids}
    hidden = trunk_of(policy)(**inputs).last_hidden_state[:, -width - 1 : -1]  # (n, T, H)
    logits = unwrap_base(policy).get_output_embeddings()(hidden)  # (n, T, V)
    logprobs = token_logprobs(logits, completion_ids, temperature)
    if not value_fn.shared:
        hidden = trunk_of(value_fn.model)(**inputs).last_hidden_state[:, -width - 1 : -1]
    return logprobs, value_fn.values(hidden)


# --- the step ------------------------------------------------------------------------------------


class PPOStep:
    """The step function: one rollout, its advantages, then ppo_epochs x num_minibatches updates."""

    STATS = ("pg", "vf", "pg_clip", "vf_clip", "approxkl", "vpred")

    def __init__(
        self,
        run: Run,
        model: Any,
        value_fn: ValueFunction,
        ref_model: Any,
        tokenizer: Any,
        prompts: Prompts,
        reward: Reward,
        kl_ctl: AdaptiveKLController,
    ) -> None:
        assert isinstance(run.config, PPOConfig)
        self.run, self.config = run, run.config
        self.model, self.value_fn, self.ref_model, self.tokenizer = model, value_fn, ref_model, tokenizer
        self.prompts, self.reward, self.kl_ctl = prompts, reward, kl_ctl

    def __call__(self, state: TrainState, updater: Updater) -> StepResult:
        config, device, timings = self.config, self.run.device, {}
        step = state.step + 1

        # 1. rollout, 2. score (with the missing-EOS penalty)
        t0 = time.perf_counter()
        picked, batch = sample(self.run, state, self.model, self.tokenizer, self.prompts, 1)
        mask = batch.completion_mask.float()  # (N, T)
        timings["time/generation"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, parts = score(self.reward, picked, batch.completions, 1)
        scores = scores.to(device)
        if config.missing_eos_penalty is not None:
            scores = scores - config.missing_eos_penalty * (~batch.has_eos).float()
        timings["time/scoring"] = time.perf_counter() - t0

        # 3. log-probs and values of the rollout (at one epoch of one micro-batch: the update's own
        # forward, run first), reference log-probs
        t0 = time.perf_counter()
        live = None
        if self.one_update_pass(batch):
            self.model.train()
            live = forward_policy_and_values(self.model, self.value_fn, batch, slice(None), config.temperature)
            old_logprobs, old_values = live[0].detach(), live[1].detach()
        else:
            old_logprobs, old_values = self.rollout_values(batch)
        if needs_reference(config):
            with reference_of(self.model, self.ref_model) as reference:
                ref_logprobs = batched_logprobs(reference, batch, config.micro_batch, config.temperature)
        else:
            ref_logprobs = old_logprobs
        timings["time/logprobs"] = time.perf_counter() - t0

        # 4. per-token rewards (KL penalty + score), GAE
        kl = kl_penalty(old_logprobs, ref_logprobs, config.kl_estimator) * mask  # (N, T)
        non_score_reward = -self.kl_ctl.value * kl
        advantages, returns = self.advantages(non_score_reward, scores, old_values, mask)

        # 5. PPO epochs over minibatches
        t0 = time.perf_counter()
        stats = self.update(batch, mask, old_logprobs, old_values, advantages, returns, updater, live)
        timings["time/update"] = time.perf_counter() - t0

        # 6. metrics, adapt the KL coefficient
        updates = config.ppo_epochs * config.num_minibatches
        mean_kl = kl.sum(dim=1).mean().item()
        non_score = non_score_reward.sum(dim=1).mean().item()
        values = {
            "loss/policy": sum(stats["pg"]) / len(stats["pg"]),
            "loss/value": sum(stats["vf"]) / len(stats["vf"]),
            "objective/kl": mean_kl,
            "objective/scores": scores.mean().item(),
            "objective/non_score_reward": non_score,
            "objective/rlhf_reward": scores.mean().item() + non_score,
            "policy/clipfrac": sum(stats["pg_clip"]) / updates,
            "policy/approxkl": sum(stats["approxkl"]) / updates,
            "val/clipfrac": sum(stats["vf_clip"]) / updates,
            "val/vpred": sum(stats["vpred"]) / updates,
            "val/mean": masked_mean(old_values, mask).item(),
            "val/var": masked_mean((old_values - masked_mean(old_values, mask)) ** 2, mask).item(),
            "val/returns": masked_mean(returns, mask).item(),
            "kl_coef": self.kl_ctl.value,
            "reward": scores.mean().item(),
            **{f"rewards/{name}": v.mean().item() for name, v in parts.items()},
            "completions/mean_length": mask.sum(dim=1).mean().item(),
            "completions/clipped_ratio": (~batch.has_eos).float().mean().item(),
            **timings,
        }
        values = reduce_metrics(self.run, values, summed=("loss/policy", "loss/value"))
        values["loss"] = values["loss/policy"] + config.vf_coef * values["loss/value"]
        rows = int(global_sum(self.run, batch.input_ids.shape[0]))
        self.kl_ctl.update(values["objective/kl"], rows)
        sample_events(self.run, step, picked, batch, scores, parts)
        return StepResult(values, samples=rows, tokens=int(global_sum(self.run, batch.attention_mask.sum().item())))

    def advantages(
        self, non_score_reward: torch.Tensor, scores: torch.Tensor, old_values: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(whitened GAE advantages, returns), both (N, T), of the per-token rewards: -kl_coef * KL_t
        everywhere, plus the score on the last completion token."""
        config = self.config
        rewards = non_score_reward.clone()
        last = (mask.sum(dim=1) - 1).long()  # (N,)
        rewards[torch.arange(len(last), device=rewards.device), last] += scores
        if config.whiten_rewards:
            rewards = whiten(self.run, rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(rewards, old_values * mask, mask, config.gamma, config.lam)
        return whiten(self.run, advantages, mask) * mask, returns

    def one_update_pass(self, batch: Rollout) -> bool:
        """Whether the update is one forward/backward over the whole rollout (one epoch, one minibatch,
        one micro-batch) of a policy and value model without dropout: then its forward, run before the
        advantages, is also the rollout's log-probs and values (the same numbers the no-grad pass would
        give), and no separate pass runs. Dropout (e.g. LoRA's) would make them differ, so it keeps the pass."""
        config = self.config
        one = config.ppo_epochs == 1 and config.num_minibatches == 1 and config.micro_batch >= batch.input_ids.shape[0]
        return one and not has_dropout(self.model, self.value_fn)

    @torch.no_grad()
    def rollout_values(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs and values (N, T) of the rollout under the policy that generated it."""
        micro, temperature = self.config.micro_batch, self.config.temperature
        self.model.eval()
        parts = [
            forward_policy_and_values(self.model, self.value_fn, batch, slice(i, i + micro), temperature)
            for i in range(0, batch.input_ids.shape[0], micro)
        ]
        self.model.train()
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def update(
        self,
        batch: Rollout,
        mask: torch.Tensor,
        old_logprobs: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
        updater: Updater,
        live: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, list[float]]:
        """Clipped policy + value losses: one optimizer step per minibatch, ppo_epochs passes over the rollout.

        Each process takes its share of every minibatch; losses are divided by the minibatch's tokens
        over all processes, so "pg" and "vf" hold each minibatch's share of this process (summed later).
        `live`: the (log-probs, values) of the whole rollout with gradients, when `one_update_pass`.
        """
        config, run = self.config, self.run
        world = run.accelerator.num_processes
        stats: dict[str, list[float]] = {k: [] for k in self.STATS}
        for _ in range(config.ppo_epochs):
            order = torch.randperm(batch.input_ids.shape[0]).tolist()
            for mb in chunks(order, config.minibatch_size // world):
                mb_tokens = global_sum(run, float(mask[mb].sum().item()))
                stats["pg"].append(0.0)
                stats["vf"].append(0.0)
                for part in chunks(mb, config.micro_batch):
                    if live is not None:  # the whole rollout, in its own order (one sum: order-free)
                        part = list(range(batch.input_ids.shape[0]))
                    idx = torch.tensor(part, device=self.run.device)
                    m = mask[idx]
                    if live is not None:
                        logprobs, vpred = live
                    else:
                        logprobs, vpred = forward_policy_and_values(
                            self.model, self.value_fn, batch, idx, config.temperature
                        )
                    pg_losses, pg_clipped = clipped_policy_loss(
                        logprobs, old_logprobs[idx], advantages[idx], config.cliprange, config.cliprange
                    )
                    vf_losses, vf_clipped = value_loss(vpred, old_values[idx], returns[idx], config.cliprange_value)
                    pg_loss = (pg_losses * m).sum() / max(mb_tokens, 1.0)
                    vf_loss = (vf_losses * m).sum() / max(mb_tokens, 1.0)
                    updater.backward(pg_loss + config.vf_coef * vf_loss)
                    share = len(part) / len(mb)
                    with torch.no_grad():
                        stats["pg"][-1] += pg_loss.item()
                        stats["vf"][-1] += vf_loss.item()
                        stats["pg_clip"].append(masked_mean(pg_clipped.float(), m).item() * share)
                        stats["vf_clip"].append(masked_mean(vf_clipped.float(), m).item() * share)
                        approxkl = 0.5 * masked_mean((logprobs - old_logprobs[idx]) ** 2, m)
                        stats["approxkl"].append(approxkl.item() * share)
                        stats["vpred"].append(masked_mean(vpred, m).item() * share)
                sum_gradients(run, self.model, self.value_fn)
                updater.step()
        return stats


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, PPOConfig)
    tokenizer, prompts = start_online(run)
    if config.minibatch_size % run.accelerator.num_processes:
        raise TrainError(
            "invalid_hyperparameters",
            f"a PPO minibatch (batch_size / num_minibatches = {config.minibatch_size}) must split evenly "
            f"over the {run.accelerator.num_processes} processes",
        )
    model = load_policy(run, tokenizer, "causal")
    value_fn = ValueFunction(config, run, model)
    training = start_training(run, nn.ModuleList([model, value_fn]), len(prompts))
    kl_ctl = AdaptiveKLController(config.kl_coef, config.adaptive_kl_target, config.adaptive_kl_horizon)
    if run.resume is not None:
        value_fn.load_state_dict(training.resumed["value"])
        kl_ctl.value = training.resumed["kl_coef"]
    ref_model = load_reference(run) if needs_reference(config) and run.spec.lora is None else None
    reward = load_reward(run)
    run.events.log(
        f"ppo: {len(prompts)} prompts, {config.total_steps(len(prompts))} rollouts of {config.batch_size}, "
        f"{config.ppo_epochs} epochs x {config.num_minibatches} minibatches, value model: {config.value_model}"
    )

    def extra_state() -> dict[str, Any]:
        return {"value": value_fn.state_dict(), "kl_coef": kl_ctl.value}

    step = PPOStep(run, model, value_fn, ref_model, tokenizer, prompts, reward, kl_ctl)
    eval_prompts = load_eval_prompts(run, tokenizer)
    evaluate = None
    if eval_prompts is not None:
        evaluate = online_eval_fn(run, model, tokenizer, eval_prompts, reward, training.state)
    checkpointer = Checkpointer(run, training, tokenizer, model=model, extra_state=extra_state)
    train_loop(run, training, step, checkpointer, eval_fn=evaluate, eval_every=config.eval_every)
