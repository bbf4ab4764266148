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
