"""Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290) and its IPO / hinge variants.

Reads top to bottom: load tokenizer and data -> load the policy -> reference log-probs -> loss on one
concatenated forward of chosen + rejected -> trainer.loop (accumulate, evaluate, save).

Reference model:
- `precompute_ref_logps` (default): each pair's reference log-probs are computed once and kept in a
  table (NaN until computed), saved in the checkpoint's training state so a resumed run does not
  recompute them. No reference model stays in memory.
  - With LoRA the reference is the base model with adapters disabled, which training never changes,
    so a pair's values are computed when the pair is first trained on or evaluated, in that
    micro-batch (one no-grad forward, as TRL does every step, but never twice): start-up is short and
    pairs a run never reaches (max_steps) or an eval file never evaluated cost nothing. On several
    processes each computes the pairs of its own share of a step.
  - In full fine-tuning the reference is the policy before its first update, so the pairs the run will
    train on (`rows_to_train`: all of them for a full epoch, fewer under max_steps) and the eval pairs
    are computed before the first update. On several processes each computes a contiguous shard and
    one all-gather gives every process the whole table (`shared_reference_logps`).
- otherwise with LoRA: the base model with adapters disabled, on the fly every step (no second copy);
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
from trainer.models import disable_dropout, is_peft, load_policy, load_reference, policy_tokenizer
from trainer.packing import checkpoint_rule, pair_batch, partition, preference_size, real_tokens, use_padding_free
from trainer.run import Run, TrainError
from trainer.state import TrainState, draw, seed_everything


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
    """(N, 2) reference log-probs [chosen, rejected] of the pairs in `parts` (NaN elsewhere), adapters disabled
    under LoRA, in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    table = torch.full((len(features), 2), float("nan"))
    adapters_off = model.disable_adapter() if is_peft(model) else nullcontext()
    with torch.no_grad(), adapters_off:
        for part in parts:
            batch = _to(pair_batch([features[i] for i in part], pad_id, packed), device)
            logps, _ = concatenated_logps(model, batch)
            table[part] = torch.stack(logps.float().chunk(2), dim=1).cpu()  # (b, 2)
    model.train(was_training)
    return table


def rows_to_train(config: DPOConfig, n: int, seed: int) -> list[int]:
    """The pair indices a fresh run draws over all its steps (trainer.state.draw), sorted: every pair once an
    epoch is reached, else only those of the first max_steps x batch_size draws."""
    draws = config.total_steps(n) * config.batch_size
    if draws >= n:
        return list(range(n))
    return sorted(set(draw(TrainState(), n, draws, seed)))


def shared_reference_logps(
    run: Run,
    model: Any,
    features: list[PreferenceFeatures],
    pad_id: int,
    cut: Callable[[list[int]], list[list[int]]],
    packed: bool,
    rows: list[int] | None = None,
) -> torch.Tensor:
    """reference_logps of the pairs `rows` (default: all), each process computing 1/world of them; an (N, 2)
    table on every process, NaN outside `rows`.

    `cut` makes micro-batches of a list of pair indices (trainer.packing.partition); each process's share is
    sorted by length first, so its micro-batches pad little (the values do not depend on the grouping)."""
    acc = run.accelerator
    wanted = list(range(len(features))) if rows is None else rows
    table = torch.full((len(features), 2), float("nan"))
    if not wanted:
        return table
    bare = acc.unwrap_model(model)  # the bare model: LoRA's disable_adapter, and no DDP for a no-grad pass
    per = -(-len(wanted) // acc.num_processes)  # ceil: shards of equal size for the gather, the last padded
    mine = wanted[acc.process_index * per : (acc.process_index + 1) * per]
    by_length = sorted(mine, key=lambda i: -max(len(features[i].chosen_ids), len(features[i].rejected_ids)))
    local = reference_logps(bare, features, pad_id, cut(by_length) if mine else [], run.device, packed)
    if acc.num_processes == 1:
        return local
    padded = torch.zeros(per, 2)
    padded[: len(mine)] = local[mine]
    table[wanted] = acc.gather(padded.to(run.device)).cpu()[: len(wanted)]
    return table


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
    if config.disable_dropout:
        disable_dropout(policy, events.log)
    packed = use_padding_free(run, policy, True, tokenizer)
    sizes, eval_sizes = [preference_size(f) for f in features], [preference_size(f) for f in eval_features]
    cut, cut_eval = partition(run, sizes, packed), partition(run, eval_sizes, packed)
    training = start_training(run, policy, len(features))
    model = training.model

    # 3. reference
    ref_model: Any = None
    lazy = config.precompute_ref_logps and spec.lora is not None  # adapters off = the reference, at any time
    ref_train: torch.Tensor | None = training.resumed.get("ref_train")
    ref_eval: torch.Tensor | None = training.resumed.get("ref_eval")
    if lazy:
        ref_train = torch.full((len(features), 2), float("nan")) if ref_train is None else ref_train
        ref_eval = torch.full((len(eval_features), 2), float("nan")) if ref_eval is None else ref_eval
        events.log("reference log-probs: computed when a pair is first used (LoRA adapters disabled), then kept")
    elif config.precompute_ref_logps:
        if ref_train is None:
            rows, world = rows_to_train(config, len(features), spec.seed), run.accelerator.num_processes
            pairs = len(rows) + len(eval_features)
            events.log(f"computing reference log-probs of {pairs} pairs, shared by {world} process(es)")
            ref_train = shared_reference_logps(run, model, features, pad_id, cut, packed, rows)
            ref_eval = shared_reference_logps(run, model, eval_features, pad_id, cut_eval, packed)
    elif spec.lora is None:
        ref_model = load_reference(run)

    def reference_forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(b, 2) reference log-probs of a pair batch: the frozen copy, or the policy with adapters disabled."""
        with torch.no_grad():
            if ref_model is not None:
                logps, _ = concatenated_logps(ref_model, batch)
            else:
                bare = run.accelerator.unwrap_model(model)
                was_training = bare.training
                bare.eval()  # no dropout in the reference, as in the precomputed table
                with bare.disable_adapter():
                    logps, _ = concatenated_logps(bare, batch)
                bare.train(was_training)
        return torch.stack(logps.float().chunk(2), dim=1)

    def ref_for(
        rows: list[PreferenceFeatures], indices: list[int], batch: dict[str, torch.Tensor], table: torch.Tensor | None
    ) -> torch.Tensor:
        if table is None:
            return reference_forward(batch)
        missing = [j for j, i in enumerate(indices) if bool(torch.isnan(table[i, 0]))]
        if missing and not lazy:
            raise TrainError(
                "invalid_resume",
                f"the checkpoint's reference log-probs lack pair {indices[missing[0]]}: resume with the spec it was "
                "written with",
            )
        if missing:
            sub = batch if len(missing) == len(indices) else None
            if sub is None:
                sub = _to(pair_batch([rows[indices[j]] for j in missing], pad_id, packed), run.device)
            table[[indices[j] for j in missing]] = reference_forward(sub).cpu()
        return table[indices]

    # 4. loss
    def batch_loss(
        rows: list[PreferenceFeatures], indices: list[int], table: torch.Tensor | None
    ) -> tuple[torch.Tensor, dict[str, float], int]:
        batch = _to(pair_batch([rows[i] for i in indices], pad_id, packed), run.device)
        ref = ref_for(rows, indices, batch, table)
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
        accumulate(
            run,
            training,
            lambda indices: batch_loss(features, indices, ref_train),
            micro_batches=cut,
            before=checkpoint_rule(run, model, sizes, packed),
        ),
        checkpointer,
        eval_fn=eval_fn if eval_features else None,
        eval_every=config.eval_every,
    )
