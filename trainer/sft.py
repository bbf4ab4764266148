"""Supervised fine-tuning: next-token cross-entropy on completion tokens (prompt tokens masked).

Reads top to bottom: load tokenizer and data (optionally packed) -> load the model -> mean token NLL of
the completion -> trainer.loop (accumulate, evaluate, save).

Gradient accumulation weights micro-batches by their number of rows, not tokens (like most
trainers); with packing every row has max_length tokens, so the two coincide.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.checkpoints import Checkpointer
from trainer.config import SFTConfig
from trainer.data import SFTFeatures, collate_sft, encode_sft, pack_sft, read_dataset, record_report
from trainer.logprobs import completion_forward, sequence_logps
from trainer.loop import accumulate, start_training, train_loop
from trainer.models import load_policy, policy_tokenizer
from trainer.run import Run
from trainer.state import chunks, seed_everything


def completion_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean NLL per completion token, number of completion tokens) of one batch."""
    logits, labels = completion_forward(model, batch)
    sums, counts = sequence_logps(logits, labels)
    n = int(counts.sum())
    return -sums.sum() / max(n, 1), n


def _encode(run: Run, tokenizer: Any, path: str, name: str) -> list[SFTFeatures]:
    config = run.config
    assert isinstance(config, SFTConfig)
    encoded = encode_sft(
        read_dataset(path, "sft", name),
        tokenizer,
        config.max_length,
        config.max_prompt_length,
        completion_only=config.completion_only_loss,
        name=name,
    )
    record_report(run, encoded.report, name)
    if config.packing:
        packed = pack_sft(encoded.features, config.max_length)
        run.events.log(f"{name}: packed {len(encoded.features)} rows into {len(packed)} sequences")
        return packed
    return encoded.features


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, SFTConfig)
    spec = run.spec
    seed_everything(spec.seed)

    tokenizer = policy_tokenizer(run)
    pad_id = tokenizer.pad_token_id
    features = _encode(run, tokenizer, spec.train_file, "train")
    eval_features = _encode(run, tokenizer, spec.eval_file, "eval") if spec.eval_file else []

    training = start_training(run, load_policy(run, tokenizer, "causal"), len(features))

    def batch_of(items: list[SFTFeatures]) -> dict[str, torch.Tensor]:
        return {k: v.to(run.device) for k, v in collate_sft(items, pad_id).items()}

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = batch_of([features[i] for i in indices])
        loss, n_tokens = completion_nll(training.model, batch)
        return loss, {"loss": loss.item(), "num_completion_tokens": float(n_tokens)}, int(batch["attention_mask"].sum())

    def eval_fn() -> dict[str, float]:
        """Mean NLL per completion token over the whole eval file (micro-batches weighted by tokens)."""
        total, tokens = 0.0, 0
        for part in chunks(list(range(len(eval_features))), config.micro_batch):
            loss, n = completion_nll(training.model, batch_of([eval_features[i] for i in part]))
            total += loss.item() * n
            tokens += n
        return {"loss": total / max(tokens, 1)}

    train_loop(
        run,
        training,
        accumulate(run, training, loss_fn),
        Checkpointer(run, training, tokenizer),
        eval_fn=eval_fn if eval_features else None,
        eval_every=config.eval_every,
    )
