"""Supervised fine-tuning: next-token cross-entropy on completion tokens (prompt tokens masked).

Reads top to bottom: load tokenizer and data (optionally packed) -> load the model -> mean token NLL of
the completion -> run_loop -> final checkpoint.

Gradient accumulation weights micro-batches by their number of rows, not tokens (like most
trainers); with packing every row has max_length tokens, so the two coincide.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.config import SFTConfig
from trainer.data import SFTFeatures, collate_sft, encode_sft, pack_sft, read_dataset
from trainer.engine import (
    Run,
    TrainState,
    chunks,
    completion_forward,
    load_policy,
    run_loop,
    save_checkpoint,
    seed_everything,
    sequence_logps,
    setup_training,
)
from trainer.models import load_tokenizer


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
    run.events.log(encoded.report.message(name))
    run.data_report[name] = vars(encoded.report)
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

    tokenizer = load_tokenizer(spec.base_model)
    pad_id = tokenizer.pad_token_id
    features = _encode(run, tokenizer, spec.train_file, "train")
    eval_features = _encode(run, tokenizer, spec.eval_file, "eval") if spec.eval_file else []
    micro = config.micro_batch_size or config.batch_size

    model = load_policy(run, tokenizer, "causal")
    model, optimizer, scheduler, state, _ = setup_training(run, model, len(features))

    def batch_of(items: list[SFTFeatures]) -> dict[str, torch.Tensor]:
        return {k: v.to(run.device) for k, v in collate_sft(items, pad_id).items()}

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = batch_of([features[i] for i in indices])
        loss, n_tokens = completion_nll(model, batch)
        return loss, {"loss": loss.item(), "num_completion_tokens": float(n_tokens)}, int(batch["attention_mask"].sum())

    def eval_fn() -> dict[str, float]:
        total, tokens = 0.0, 0
        for part in chunks(list(range(len(eval_features))), micro):
            loss, n = completion_nll(model, batch_of([eval_features[i] for i in part]))
            total += loss.item() * n
            tokens += n
        return {"loss": total / max(tokens, 1)}

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
