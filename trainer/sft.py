"""Supervised fine-tuning: next-token cross-entropy on completion tokens (prompt tokens masked).

Reads top to bottom: load tokenizer and data (optionally packed) -> load the model -> mean token NLL of
the completion -> trainer.loop (accumulate, evaluate, save).

The loss of a step is the mean NLL over all completion tokens of the step, however the step is cut into
micro-batches and processes: each micro-batch is weighted by its completion tokens (trainer.loop.accumulate),
the fix of the gradient-accumulation bug transformers and TRL made in 2024 (before, micro-batches were
weighted by rows, so setting micro_batch_size changed the loss).

`packing` concatenates rows into max_length sequences that attend across row boundaries (the classic
constant-length packing); `padding_free` (trainer.packing) only removes the padding of a micro-batch and
keeps every row's attention to itself, so it changes no loss.
"""

from __future__ import annotations

from typing import Any

import torch

from trainer.checkpoints import Checkpointer
from trainer.config import SFTConfig
from trainer.data import IGNORE, SFTFeatures, encode_sft, pack_sft, read_dataset, record_report
from trainer.logprobs import batch_sequence_logps
from trainer.loop import accumulate, start_training, train_loop
from trainer.models import load_policy, policy_tokenizer
from trainer.packing import checkpoint_rule, collate, partition, real_tokens, sft_size, use_padding_free
from trainer.run import Run
from trainer.state import seed_everything


def completion_nll(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(mean NLL per completion token, number of completion tokens) of one trainer.packing `collate` batch."""
    sums, counts = batch_sequence_logps(model, batch)
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

    model = load_policy(run, tokenizer, "causal")
    packed = use_padding_free(run, model, True, tokenizer)
    sizes = [sft_size(f) for f in features]
    cut = partition(run, sizes, packed)
    cut_eval = partition(run, [sft_size(f) for f in eval_features], packed)
    completion_tokens = [sum(label != IGNORE for label in f.labels[1:]) for f in features]
    training = start_training(run, model, len(features))

    def batch_of(items: list[SFTFeatures]) -> dict[str, torch.Tensor]:
        batch = collate([f.input_ids for f in items], [f.labels for f in items], pad_id, packed)
        return {k: v.to(run.device) for k, v in batch.items()}

    def loss_fn(indices: list[int]) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = batch_of([features[i] for i in indices])
        loss, _ = completion_nll(training.model, batch)
        return loss, {"loss": loss.item()}, real_tokens(batch)

    def eval_fn() -> dict[str, float]:
        """Mean NLL per completion token over the whole eval file (micro-batches weighted by tokens)."""
        total, tokens = 0.0, 0
        for part in cut_eval(list(range(len(eval_features)))):
            loss, n = completion_nll(training.model, batch_of([eval_features[i] for i in part]))
            total += loss.item() * n
            tokens += n
        return {"loss": total / max(tokens, 1)}

    train_loop(
        run,
        training,
        accumulate(
            run,
            training,
            loss_fn,
            micro_batches=cut,
            weight=lambda part: sum(completion_tokens[i] for i in part),
            before=checkpoint_rule(run, training.model, sizes, packed),
        ),
        Checkpointer(run, training, tokenizer),
        eval_fn=eval_fn if eval_features else None,
        eval_every=config.eval_every,
    )
