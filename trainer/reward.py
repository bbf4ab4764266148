"""Reward-model training: a scalar head on any backbone, Bradley-Terry loss on preference pairs.

Reads top to bottom: load tokenizer and data -> load the backbone with a fresh 1-label
sequence-classification head -> score chosen and rejected in one forward -> reward_loss ->
trainer.loop (accumulate, evaluate, save).

The score of a sequence is the head's output at its last non-pad token for decoder backbones (how
transformers' *ForSequenceClassification reads it, through config.pad_token_id, which we always set)
and the pooled [CLS] output for BERT-style encoders. The output folder therefore loads with
`AutoModelForSequenceClassification.from_pretrained(dir)` and scores exactly as during training, which
is what the online algorithms' model rewards do. A `margin` column is used when present (Llama 2).
Padding-free (trainer.packing) applies to decoders with a `score` head; encoders train padded.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from trainer.checkpoints import Checkpointer
from trainer.config import RewardConfig
from trainer.data import PreferenceFeatures, encode_preference_files
from trainer.loop import accumulate, average_metrics, start_training, train_loop
from trainer.losses import reward_loss
from trainer.models import disable_dropout, load_policy, policy_tokenizer, unwrap_base
from trainer.packing import (
    checkpoint_rule,
    forward_groups,
    last_hidden,
    model_inputs,
    pair_batch,
    partition,
    preference_size,
    real_tokens,
    sub_batch,
    use_padding_free,
)
from trainer.run import Run
from trainer.state import seed_everything


def pair_scores(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores (B,), rejected scores (B,)) from one forward over the chosen+rejected batch.

    Padded: the model pools its own score, over forwards of rows of similar length on CPU (see
    trainer.packing.forward_groups). Packed (one row): the score head is applied to the final hidden
    state at each sequence's `last` token, the token the model's own pooling would pick.
    """
    if "position_ids" not in batch:
        groups = forward_groups(batch)  # rows of similar length together (trainer.packing), on CPU
        parts = [model(**model_inputs(sub_batch(batch, rows))).logits.squeeze(-1) for rows in groups]
        order = torch.tensor([i for rows in groups for i in rows], device=parts[0].device)
        scores = torch.cat(parts)[torch.argsort(order)]  # (2B,) back in batch order
    else:
        hidden = last_hidden(model, batch, causal=False)  # (1, N, d)
        head: Any = unwrap_base(extract_model_from_parallel(model)).score
        scores = head(hidden[0, batch["last"]]).squeeze(-1)  # (2B,)
    chosen, rejected = scores.float().chunk(2)
    return chosen, rejected


def pair_metrics(
    config: RewardConfig, chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None
) -> tuple[torch.Tensor, dict[str, float]]:
    loss = reward_loss(chosen, rejected, margin=margin, center_rewards_coefficient=config.center_rewards_coefficient)
    return loss, {
        "loss": loss.item(),
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "rewards/chosen": chosen.mean().item(),
        "rewards/rejected": rejected.mean().item(),
    }


def _margins(pairs: list[PreferenceFeatures], device: torch.device) -> torch.Tensor | None:
    """The pairs' `margin` column (0 where a row has none), or None when no row has one."""
    if all(f.margin is None for f in pairs):
        return None
    return torch.tensor([f.margin or 0.0 for f in pairs], dtype=torch.float32, device=device)


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, RewardConfig)
    spec = run.spec
    seed_everything(spec.seed)

    tokenizer = policy_tokenizer(run)
    pad_id = tokenizer.pad_token_id
    features, eval_features = encode_preference_files(run, tokenizer)

    model = load_policy(run, tokenizer, "seqcls")
    if config.disable_dropout:
        disable_dropout(model, run.events.log)
    # Packed rows need the score head at chosen positions: only decoders with a `score` head (Llama & co.).
    packed = hasattr(unwrap_base(model), "score") and use_padding_free(run, model, False, tokenizer)
    sizes = [preference_size(f) for f in features]
    cut = partition(run, sizes, packed)
    cut_eval = partition(run, [preference_size(f) for f in eval_features], packed)
    training = start_training(run, model, len(features))

    def batch_loss(rows: list[PreferenceFeatures], indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        pairs = [rows[i] for i in indices]
        batch = {k: v.to(run.device) for k, v in pair_batch(pairs, pad_id, packed).items()}
        chosen, rejected = pair_scores(training.model, batch)
        margin = _margins(pairs, run.device)
        loss, metrics = pair_metrics(config, chosen, rejected, margin)
        return loss, metrics, real_tokens(batch)

    def eval_fn() -> dict[str, float]:
        parts = cut_eval(list(range(len(eval_features))))
        return average_metrics(parts, lambda part: batch_loss(eval_features, part)[1])

    train_loop(
        run,
        training,
        accumulate(
            run,
            training,
            lambda indices: batch_loss(features, indices),
            micro_batches=cut,
            before=checkpoint_rule(run, training.model, sizes, packed),
        ),
        Checkpointer(run, training, tokenizer),
        eval_fn=eval_fn if eval_features else None,
        eval_every=config.eval_every,
    )
