"""How is the log-probability of a completion computed? One primitive for every algorithm.

`token_logprobs` takes log softmax(logits / temperature) at the given tokens without materialising a
(B, T, V) log-softmax; `sequence_logps` (offline: DPO, SFT) sums it over the completion tokens of a
labelled batch; `completion_logprobs` (online: GRPO, PPO) runs a model on generated sequences and
returns the per-token values.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.data import IGNORE


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / temperature) at `token_ids`, (N, T, V) -> (N, T), in float32.

    log p(x) = logit_x - logsumexp(logits), with the logsumexp taken one sequence at a time: the
    vocabulary-sized float32 temporaries then cover one row instead of the batch, which keeps peak
    memory down for large vocabularies.
    """
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1).float()  # (N, T)
    normaliser = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (N, T)
    return picked - normaliser


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs (B,), completion token counts (B,)) for logits (B, T, V), labels (B, T).

    Position t predicts label t+1 (the usual causal shift); labels equal to IGNORE do not count.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE  # (B, T-1)
    logps = token_logprobs(logits[:, :-1, :], targets.masked_fill(~mask, 0)) * mask  # (B, T-1)
    return logps.sum(-1), mask.sum(-1)


def completion_forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a causal LM and return (logits, labels) cut to the span that holds completion tokens.

    The LM head (a vocab-sized matmul) only runs from the position before the earliest completion
    token (`logits_to_keep`), so prompt positions cost no logits. Returns logits (B, K, V) and the
    matching labels (B, K), ready for `sequence_logps`.
    """
    labels = batch["labels"]
    width = labels.shape[1]
    has_label = (labels != IGNORE).any(0)
    first = int(has_label.float().argmax()) if bool(has_label.any()) else width - 1
    keep = width - max(first - 1, 0)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    return out.logits, labels[:, width - keep :]


def completion_logprobs(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token log-probs (N, T) of the completion tokens that end each (N, P + T) row, at `temperature`.

    Positions are counted from the first real token so left-padded rows see the positions they were
    generated with; the LM head runs only on the T positions that predict completion tokens.
    """
    width = completion_ids.shape[1]
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=width + 1
    ).logits[:, :-1, :]  # (N, T, V)
    return token_logprobs(logits, completion_ids, temperature)
