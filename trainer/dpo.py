"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) and its IPO / hinge variants.

Reads top to bottom: load tokenizer and data -> load the policy -> reference log-probs -> loss on one
concatenated forward of chosen + rejected -> trainer.loop (accumulate, evaluate, save).

Reference model:
- `precompute_ref_logps` (default): the reference log-probs of every train/eval pair are computed once,
  before the first update, with the policy itself (it still equals the reference then; LoRA adapters
  are disabled for it). No reference model stays in memory; the values are kept in the checkpoint's
  training state so a resumed run does not recompute them. On several processes each computes a
  contiguous shard and one all-gather gives every process the whole table (`shared_reference_logps`).
- otherwise with LoRA: the base model with adapters disabled, on the fly (no second copy);
- otherwise: a second, frozen copy of the base model.

Departures from the paper: none in the loss. Like TRL, IPO uses per-token mean log-probs, and the
metrics `rewards/*` are beta-scaled log-ratios (for IPO, of the mean log-probs).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch

from trainer.checkpoints import Checkpointer
from trainer.config import DPOConfig
from trainer.data import PreferenceFeatures, encode_preference_files
from trainer.logprobs import batch_sequence_logps
from trainer.loop import accumulate, average_metrics, start_training, train_loop
from trainer.losses import dpo_loss
from trainer.models import is_peft, load_policy, load_reference, policy_tokenizer
from trainer.packing import pair_batch, partition, preference_size, real_tokens, use_padding_free
from trainer.run import Run
from trainer.state import seed_everything


def concatenated_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward over the chosen+rejected batch -> (summed logps (2B,), completion lengths (2B,))."""
    return batch_sequence_logps(model, batch)


def reference_logps(
    model: Any,
    features: list[PreferenceFeatures],
    pad_id: int,
    parts: list[list[int]],
    device: torch.device,
    packed: bool,
) -> torch.Tensor:
    """(N, 2) reference log-probs [chosen, rejected] of every pair, with adapters disabled under LoRA."""
    was_training = model.training
    model.eval()
    table = torch.zeros(len(features), 2)
    adapters_off = model.disable_adapter() if is_peft(model) else nullcontext()
    with torch.no_grad(), adapters_off:
        for part in parts:
            batch = _to(pair_batch([features[i] for i in part], pad_id, packed), device)
            logps, _ = concatenated_logps(model, batch)
            table[part] = torch.stack(logps.float().chunk(2), dim=1).cpu()  # (b, 2)
    model.train(was_training)
    return table


def shared_reference_logps(
    run: Run,
    model: Any,
    features: list[PreferenceFeatures],
    pad_id: int,
    cut: Callable[[list[int]], list[list[int]]],
    packed: bool,
) -> torch.Tensor:
    """reference_logps of every pair, each process computing 1/world of them; (N, 2) on every process.

    `cut` makes micro-batches of a list of pair indices (trainer.packing.partition)."""
    acc = run.accelerator
    if not features:
        return torch.zeros(0, 2)
    bare = acc.unwrap_model(model)  # the bare model: LoRA's disable_adapter, and no DDP for a no-grad pass
    if acc.num_processes == 1:
        return reference_logps(bare, features, pad_id, cut(list(range(len(features)))), run.device, packed)
    per = -(-len(features) // acc.num_processes)  # ceil: shards of equal size for the gather, the last padded
    start = acc.process_index * per
    mine = list(range(start, min(start + per, len(features))))
    table = reference_logps(bare, features, pad_id, cut(mine) if mine else [], run.device, packed)
    padded = torch.zeros(per, 2)
    padded[: len(mine)] = table[mine]
    return acc.gather(padded.to(run.device)).cpu()[: len(features)]


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


def pair_metrics(
    config: DPOConfig, policy: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor
) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean DPO loss of a batch and its metrics (DESIGN §7 names). policy/lengths: (2B,), ref: (B, 2)."""
    chosen, rejected = policy.chunk(2)
    chosen_len, rejected_len = lengths.chunk(2)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        chosen,
        rejected,
        ref[:, 0].to(chosen),
        ref[:, 1].to(chosen),
        beta=config.beta,
        loss_type=config.loss_type,
        label_smoothing=config.label_smoothing,
        chosen_lengths=chosen_len,
        rejected_lengths=rejected_len,
    )
    loss = losses.mean()
    metrics = {
        "loss": loss.item(),
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": chosen.detach().mean().item(),
        "logps/rejected": rejected.detach().mean().item(),
    }
    return loss, metrics


def train(run: Run) -> None:
    config = run.config
    assert isinstance(config, DPOConfig)
    spec, events = run.spec, run.events
    seed_everything(spec.seed)

    # 1. data
    tokenizer = policy_tokenizer(run)
    pad_id = tokenizer.pad_token_id
    features, eval_features = encode_preference_files(run, tokenizer)

    # 2. policy, how micro-batches are cut and packed, optimizer, (resumed) state
    policy = load_policy(run, tokenizer, "causal")
    packed = use_padding_free(run, policy, True, tokenizer)
    sizes, eval_sizes = [preference_size(f) for f in features], [preference_size(f) for f in eval_features]
    cut, cut_eval = partition(run, sizes, packed), partition(run, eval_sizes, packed)
    training = start_training(run, policy, len(features))
    model = training.model

    # 3. reference
    ref_model: Any = None
    ref_train: torch.Tensor | None = training.resumed.get("ref_train")
    ref_eval: torch.Tensor | None = training.resumed.get("ref_eval")
    if config.precompute_ref_logps:
        if ref_train is None:
            pairs, world = len(features) + len(eval_features), run.accelerator.num_processes
            events.log(f"computing reference log-probs of {pairs} pairs, shared by {world} process(es)")
            ref_train = shared_reference_logps(run, model, features, pad_id, cut, packed)
            ref_eval = shared_reference_logps(run, model, eval_features, pad_id, cut_eval, packed)
    elif spec.lora is None:
        ref_model = load_reference(run)

    def ref_for(indices: list[int], batch: dict[str, torch.Tensor], table: torch.Tensor | None) -> torch.Tensor:
        if table is not None:
            return table[indices]
        with torch.no_grad():
            if ref_model is not None:
                logps, _ = concatenated_logps(ref_model, batch)
            else:
                with run.accelerator.unwrap_model(model).disable_adapter():
                    logps, _ = concatenated_logps(model, batch)
        return torch.stack(logps.float().chunk(2), dim=1)

    # 4. loss
    def batch_loss(
        rows: list[PreferenceFeatures], indices: list[int], table: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = _to(pair_batch([rows[i] for i in indices], pad_id, packed), run.device)
        ref = ref_for(indices, batch, table)
        logps, lengths = concatenated_logps(model, batch)
        loss, metrics = pair_metrics(config, logps, lengths, ref)
        return loss, metrics, real_tokens(batch)

    def eval_fn() -> dict[str, float]:
        return average_metrics(
            cut_eval(list(range(len(eval_features)))), lambda part: batch_loss(eval_features, part, ref_eval)[1]
        )

    # 5. train, evaluate, save
    checkpointer = Checkpointer(
        run, training, tokenizer, extra_state=lambda: {"ref_train": ref_train, "ref_eval": ref_eval}
    )
    train_loop(
        run,
        training,
        accumulate(run, training, lambda indices: batch_loss(features, indices, ref_train), micro_batches=cut),
        checkpointer,
        eval_fn=eval_fn if eval_features else None,
        eval_every=config.eval_every,
    )
