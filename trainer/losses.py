"""Losses and estimators as small pure tensor functions, each with its equation and paper.

Signatures (all tensors are per example unless said otherwise; B = batch size):

- `dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta,
  loss_type="sigmoid", label_smoothing=0.0, chosen_lengths=None, rejected_lengths=None)`
  -> `(losses (B,), chosen_rewards (B,), rejected_rewards (B,))`. Log-probs are sums over completion
  tokens; `ipo` needs the completion lengths to turn them into per-token means.
- `reward_loss(chosen_rewards, rejected_rewards, *, margin=None, center_rewards_coefficient=None)`
  -> scalar loss (Bradley-Terry).

Online losses (GRPO/PPO) are appended below the offline ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# DPO family. All variants are functions of the implicit reward margin
#   h = (log pi(y_w|x) - log pi(y_l|x)) - (log ref(y_w|x) - log ref(y_l|x))
#     = pi_logratios - ref_logratios
# ---------------------------------------------------------------------------------------------


def _sigmoid(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, eq. 7), conservative when label_smoothing = eps > 0
    (Mitchell 2023, "A note on DPO with noisy preferences"):

        L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    """
    return -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)


def _ipo(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, arXiv:2310.12036, eq. 17), with beta playing the role of tau:

        L = (h - 1 / (2 * beta))^2

    h is built from per-token *mean* log-probs (length-normalised), as TRL does.
    """
    return (logits - 1 / (2 * beta)) ** 2


def _hinge(logits: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    """SLiC hinge loss (Zhao et al. 2023, arXiv:2305.10425, eq. 3 with delta = 1 / beta):

    L = max(0, 1 - beta * h)
    """
    return torch.relu(1 - beta * logits)


DPO_LOSSES: dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
    "hinge": _hinge,
}
LENGTH_NORMALISED = {"ipo"}
"""Loss types whose log-probs are per-token means instead of sums."""


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO-family losses and the implicit rewards.

    Inputs are summed completion log-probs, shape (B,). For `ipo` every log-prob is first divided by
    its completion length (`chosen_lengths`, `rejected_lengths`, token counts, shape (B,)).

        h = (pi_w - pi_l) - (ref_w - ref_l);  loss = DPO_LOSSES[loss_type](h)
        chosen_rewards = beta * (pi_w - ref_w);  rejected_rewards = beta * (pi_l - ref_l)   (detached)
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {sorted(DPO_LOSSES)}")
    if loss_type in LENGTH_NORMALISED:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths")
        policy_chosen_logps = policy_chosen_logps / chosen_lengths
        ref_chosen_logps = ref_chosen_logps / chosen_lengths
        policy_rejected_logps = policy_rejected_logps / rejected_lengths
        ref_rejected_logps = ref_rejected_logps / rejected_lengths
    pi_logratios = policy_chosen_logps - policy_rejected_logps
    ref_logratios = ref_chosen_logps - ref_rejected_logps
    logits = pi_logratios - ref_logratios
    losses = DPO_LOSSES[loss_type](logits, beta, label_smoothing)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return losses, chosen_rewards, rejected_rewards


# ---------------------------------------------------------------------------------------------
# Reward model
# ---------------------------------------------------------------------------------------------


def reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Bradley-Terry pairwise loss of a scalar reward model, averaged over the batch.

        L = -mean(log sigmoid(r_w - r_l - m)) + c * mean((r_w + r_l)^2)

    - Bradley & Terry 1952; as the RLHF reward model of Ouyang et al. 2022 (arXiv:2203.02155, eq. 1).
    - m: optional per-pair margin (Llama 2, Touvron et al. 2023, arXiv:2307.09288, eq. 2); 0 when absent.
    - c: `center_rewards_coefficient`, the auxiliary loss of Eisenstein et al. 2023 (arXiv:2312.09244)
      that keeps rewards centred at 0; off when None or 0.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    return loss


# ---------------------------------------------------------------------------------------------
# Online RL (GRPO, PPO). Shapes: B sequences, T completion tokens; `mask` (B, T) is 1 on real
# completion tokens (up to and including EOS) and 0 after. Log-probs are per token, (B, T).
# ---------------------------------------------------------------------------------------------


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mean of `values` over the positions where mask is 1 (0 when the mask is empty)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / sqrt(var + 1e-8) over the masked positions (mean added back when not shift_mean)."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO outcome advantages: every completion's reward relative to its group's.

    DeepSeekMath (Shao et al. 2024, arXiv:2402.03300, §4.1.2):

        A_i = (r_i - mean(r_group)) / (std + eps)

    `rewards` (B * G,) holds G consecutive completions per prompt. std is the (unbiased) std of the
    group (`scale_rewards="group"`, the paper), of the whole batch (`"batch"`, Hu et al. 2025
    REINFORCE++ style), or 1 (`"none"`: Dr. GRPO, Liu et al. 2025, arXiv:2503.20783, which removes the
    std because it up-weights groups that are nearly all right or all wrong). Returns (B * G,).
    """
    grouped = rewards.view(-1, num_generations)  # (B, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    scales: dict[str, Callable[[], torch.Tensor]] = {
        "group": lambda: grouped.std(dim=1, keepdim=True) + eps,  # (B, 1)
        "batch": lambda: rewards.std() + eps,
        "none": lambda: torch.ones(()),
    }
    if scale_rewards not in scales:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; choose one of {sorted(scales)}")
    return (centred / scales[scale_rewards]()).flatten()


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi.

    Schulman 2020, "Approximating KL divergence" (http://joschu.net/blog/kl-approx.html), with
    log_ratio = log pi(o_t) - log pi_ref(o_t):

        k1 = log_ratio                               unbiased, can be negative (PPO's reward penalty)
        k2 = log_ratio^2 / 2                         biased, low variance
        k3 = exp(-log_ratio) - 1 + log_ratio         unbiased, always >= 0 (GRPO, eq. 4 of arXiv:2402.03300:
                                                      pi_ref/pi - log(pi_ref/pi) - 1)
    """
    log_ratio = logprobs - ref_logprobs
    estimates: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "k1": lambda lr: lr,
        "k2": lambda lr: 0.5 * lr**2,
        "k3": lambda lr: torch.exp(-lr) - 1 + lr,
    }
    if estimator not in estimates:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {sorted(estimates)}")
    return estimates[estimator](log_ratio)


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token (Schulman et al. 2017, arXiv:1707.06347, eq. 7), negated to a loss,
    with DAPO's decoupled clip range (Yu et al. 2025, arXiv:2503.14476, eq. 8: "clip-higher"):

        ratio    = exp(logprobs - old_logprobs)
        pg_loss1 = -A * ratio
        pg_loss2 = -A * clip(ratio, 1 - epsilon_low, 1 + epsilon_high)
        loss     = max(pg_loss1, pg_loss2)

    `advantages` is (B,) for sequence-level advantages (GRPO, broadcast over tokens) or (B, T) (PPO).
    Returns (per-token loss (B, T), is_clipped (B, T) bool: where the clipped term was taken).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # (B, 1)
    ratio = torch.exp(logprobs - old_logprobs)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    return torch.maximum(pg_loss1, pg_loss2), pg_loss2 > pg_loss1


# How the per-token loss of a batch becomes one number. Every variant returns this micro-batch's
# *share* of the optimizer-batch loss, so summing over the micro-batches of a step (gradient
# accumulation, and over processes) gives the loss of the whole batch. With N sequences and
# L_i = sum_t mask_it * loss_it over the optimizer batch:
#   grpo     (1/N) * sum_i L_i / |o_i|      per-sequence mean, then mean over sequences (DeepSeekMath eq. 3)
#   bnpo     mean over micro-batches of (sum L_i / tokens in the micro-batch)  (token mean per micro-batch;
#            equals dapo only when every micro-batch has the same number of tokens)
#   dr_grpo  sum_i L_i / (N * max_completion_length)   a constant denominator: no length bias (Dr. GRPO eq. 3)
#   dapo     sum_i L_i / (tokens in the whole optimizer batch)   token-level mean (DAPO eq. 8)


def _grpo(loss: torch.Tensor, mask: torch.Tensor, totals: dict[str, float]) -> torch.Tensor:
    per_sequence = (loss * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # (B,)
    return per_sequence.sum() / totals["num_sequences"]


def _bnpo(loss: torch.Tensor, mask: torch.Tensor, totals: dict[str, float]) -> torch.Tensor:
    return (loss * mask).sum() / mask.sum().clamp(min=1) / totals["accumulation_steps"]


def _dr_grpo(loss: torch.Tensor, mask: torch.Tensor, totals: dict[str, float]) -> torch.Tensor:
    return (loss * mask).sum() / (totals["num_sequences"] * totals["max_completion_length"])


def _dapo(loss: torch.Tensor, mask: torch.Tensor, totals: dict[str, float]) -> torch.Tensor:
    return (loss * mask).sum() / max(totals["num_tokens"], 1.0)


TOKEN_AGGREGATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor, dict[str, float]], torch.Tensor]] = {
    "grpo": _grpo,
    "bnpo": _bnpo,
    "dr_grpo": _dr_grpo,
    "dapo": _dapo,
}


def aggregate_token_loss(
    per_token_loss: torch.Tensor,
    mask: torch.Tensor,
    loss_type: str,
    *,
    num_sequences: int | None = None,
    num_tokens: float | None = None,
    accumulation_steps: int = 1,
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to this micro-batch's share of the optimizer-batch loss.

    See the table above TOKEN_AGGREGATIONS for each `loss_type`'s denominator. The totals describe the
    whole optimizer batch (all micro-batches, all processes); each defaults to this micro-batch's own
    value, which is right when there is no accumulation:
    - num_sequences: sequences in the optimizer batch (grpo, dr_grpo)
    - num_tokens: completion tokens (mask sum) in the optimizer batch (dapo)
    - accumulation_steps: micro-batches per optimizer step, over all processes (bnpo)
    - max_completion_length: the generation limit, max_new_tokens (dr_grpo; default: T)
    """
    if loss_type not in TOKEN_AGGREGATIONS:
        raise ValueError(f"unknown loss_type {loss_type!r}; choose one of {sorted(TOKEN_AGGREGATIONS)}")
    mask = mask.to(per_token_loss.dtype)
    totals = {
        "num_sequences": float(num_sequences if num_sequences is not None else per_token_loss.shape[0]),
        "num_tokens": float(num_tokens if num_tokens is not None else mask.sum().item()),
        "accumulation_steps": float(accumulation_steps),
        "max_completion_length": float(max_completion_length or per_token_loss.shape[1]),
    }
    return TOKEN_AGGREGATIONS[loss_type](per_token_loss, mask, totals)


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, arXiv:1506.02438, eq. 16) per token:

        delta_t = r_t + gamma * V_{t+1} - V_t          (V_{T} = 0 after the last real token)
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V

    `rewards`, `values`, `mask` are (B, T), right-padded. Returns (advantages, returns), both (B, T),
    zero on padding.
    """
    rewards = rewards * mask
    values = values * mask
    advantages_reversed = []
    lastgaelam = torch.zeros_like(rewards[:, 0])
    length = rewards.shape[1]
    for t in reversed(range(length)):
        nextvalues = values[:, t + 1] if t + 1 < length else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * nextvalues - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages_reversed.append(lastgaelam)
    advantages = torch.stack(advantages_reversed[::-1], dim=1) * mask
    return advantages, (advantages + values) * mask


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, cliprange_value: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss per token (PPO as implemented by OpenAI baselines; Ziegler et al. 2019,
    arXiv:1909.08593; "The 37 implementation details of PPO", Huang et al. 2022, detail 9):

        v_pred_clipped  = old_values + clip(values - old_values, -c, c)
        v_loss_unclipped = (values - returns)^2
        v_loss_clipped   = (v_pred_clipped - returns)^2
        loss             = 0.5 * max(v_loss_unclipped, v_loss_clipped)

    Returns (per-token loss (B, T), is_clipped (B, T) bool: where the clipped term was larger).
    """
    v_pred_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    v_loss_unclipped = (values - returns) ** 2
    v_loss_clipped = (v_pred_clipped - returns) ** 2
    return 0.5 * torch.maximum(v_loss_unclipped, v_loss_clipped), v_loss_clipped > v_loss_unclipped
