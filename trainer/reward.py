"""Reward-model training: a scalar head on any backbone, Bradley-Terry loss on preference pairs.

Reads top to bottom: load tokenizer and data -> load the backbone with a fresh 1-label
sequence-classification head -> score chosen and rejected in one forward -> reward_loss ->
run_loop -> final checkpoint.

The score of a sequence is the head's output at its last non-pad token for decoder backbones (how
transformers' *ForSequenceClassification reads it, through config.pad_token_id, which we always set)
and the pooled [CLS] output for BERT-style encoders. The output folder therefore loads with
`AutoModelForSequenceClassification.from_pretrained(dir)` and scores exactly as during training, which
is what the online algorithms' model rewards do. A `margin` column is used when present (Llama 2).
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import RewardConfig
from trainer.data import PreferenceFeatures, collate_preferences
from trainer.engine import (
    Run,
    TrainState,
    chunks,
    encode_preference_file,
    load_policy,
    run_loop,
    save_checkpoint,
    seed_everything,
    setup_training,
)
from trainer.losses import reward_loss
from trainer.models import load_tokenizer


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

    tokenizer = load_tokenizer(spec.base_model)
    pad_id = tokenizer.pad_token_id
    features: list[PreferenceFeatures] = encode_preference_file(run, tokenizer, spec.train_file, "train")
    eval_features: list[PreferenceFeatures] = (
        encode_preference_file(run, tokenizer, spec.eval_file, "eval") if spec.eval_file else []
    )
    micro = config.micro_batch_size or config.batch_size

    model = load_policy(run, tokenizer, "seqcls")
    model, optimizer, scheduler, state, _ = setup_training(run, model, len(features))

    def batch_of(items: list[PreferenceFeatures]) -> dict[str, torch.Tensor]:
        return {k: v.to(run.device) for k, v in collate_preferences(items, pad_id).items()}

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = batch_of([features[i] for i in indices])
        chosen, rejected = pair_scores(model, batch)
        loss, metrics = pair_metrics(config, chosen, rejected, batch.get("margin"))
        return loss, metrics, int(batch["attention_mask"].sum())

    def eval_fn() -> dict[str, float]:
        totals: dict[str, float] = {}
        for part in chunks(list(range(len(eval_features))), micro):
            batch = batch_of([eval_features[i] for i in part])
            chosen, rejected = pair_scores(model, batch)
            _, metrics = pair_metrics(config, chosen, rejected, batch.get("margin"))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + v * len(part)
        return {k: v / len(eval_features) for k, v in totals.items()}

    def save(kind: str, state: TrainState) -> Any:
        return save_checkpoint(
            run,
            kind,
            state,
            model=model,
            tokenizer=tokenizer,
            optimizer=optimizer,
            scheduler=scheduler,
        )

    state = run_loop(
        run,
        model,
        optimizer,
        scheduler,
        state,
        n_train=len(features),
        loss_fn=loss_fn,
        save_fn=save,
        eval_fn=eval_fn if eval_features else None,
    )
    save("final", state)
