"""Reward-model training: a scalar head on any backbone, Bradley-Terry loss on preference pairs.

Reads top to bottom: load tokenizer and data -> load the backbone with a fresh 1-label
sequence-classification head -> score chosen and rejected in one forward -> reward_loss ->
trainer.loop (accumulate, evaluate, save).

The score of a sequence is the head's output at its last non-pad token for decoder backbones (how
transformers' *ForSequenceClassification reads it, through config.pad_token_id, which we always set)
and the pooled [CLS] output for BERT-style encoders. The output folder therefore loads with
`AutoModelForSequenceClassification.from_pretrained(dir)` and scores exactly as during training, which
is what the online algorithms' model rewards do. A `margin` column is used when present (Llama 2).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.checkpoints import Checkpointer
from trainer.config import RewardConfig
from trainer.data import PreferenceFeatures, collate_preferences, encode_preference_files
from trainer.loop import accumulate, average_metrics, start_training, train_loop
from trainer.losses import reward_loss
from trainer.models import load_policy, policy_tokenizer
from trainer.run import Run
from trainer.state import seed_everything


def pair_scores(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores (B,), rejected scores (B,)) from one forward over the (2B, T) batch."""
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)  # (2B,)
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


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, RewardConfig)
    spec = run.spec
    seed_everything(spec.seed)

    tokenizer = policy_tokenizer(run)
    pad_id = tokenizer.pad_token_id
    features, eval_features = encode_preference_files(run, tokenizer)

    training = start_training(run, load_policy(run, tokenizer, "seqcls"), len(features))

    def batch_loss(rows: list[PreferenceFeatures], indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = {k: v.to(run.device) for k, v in collate_preferences([rows[i] for i in indices], pad_id).items()}
        chosen, rejected = pair_scores(training.model, batch)
        loss, metrics = pair_metrics(config, chosen, rejected, batch.get("margin"))
        return loss, metrics, int(batch["attention_mask"].sum())

    def eval_fn() -> dict[str, float]:
        return average_metrics(len(eval_features), config.micro_batch, lambda part: batch_loss(eval_features, part)[1])

    train_loop(
        run,
        training,
        accumulate(run, training, lambda indices: batch_loss(features, indices)),
        Checkpointer(run, training, tokenizer),
        eval_fn=eval_fn if eval_features else None,
        eval_every=config.eval_every,
    )
