"""How do the offline algorithms (DPO, reward, SFT) batch sequences? Padded or padding-free, by rows or tokens.

Padding-free (`padding_free`, TRL's name): a micro-batch's sequences are concatenated into ONE row
with `position_ids` that restart at 0 for every sequence and no attention mask. transformers
(masking_utils.find_packed_sequence_indices) reads the restarts as sequence boundaries and builds a
block-diagonal causal mask for sdpa/eager attention (flash-attention takes them as cu_seqlens), so each
token attends only within its own sequence, exactly as in a padded batch, and no projection or MLP FLOP
is spent on padding. `packing_is_exact` checks this on the loaded model once (two short sequences,
packed vs padded); a model that builds its mask otherwise (an encoder, custom code) falls back to padding.

Token budget (`max_tokens_per_batch`): a process's share of a step is sorted by length and cut into
micro-batches of at most that many tokens (padded: rows x longest; padding-free: real tokens), and at
most `micro_batch` examples each. The optimizer batch and the loss normalisation do not depend on how
a step is cut (trainer.loop.accumulate weights every micro-batch by its share of the step).

Departure from TRL's padding-free mode: TRL needs flash-attention for it; here sdpa works too because
transformers 5 derives the mask from the position ids, but sdpa then computes the full (N, N) score
matrix of the packed row (masked), so attention FLOPs grow with the square of the packed length. The
token budget bounds that. That is why `padding_free` is off by default: on Orca pairs cut to 256 tokens
(almost no padding) it was slower on CPU sdpa for ~10% less memory (bench/README.md); it pays with
flash-attention or with very unequal lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from trainer.config import activation_bytes_per_token, auto_checkpoints
from trainer.data import IGNORE, PreferenceFeatures, SFTFeatures, pad
from trainer.models import SwitchableCheckpointing, free_memory_bytes

if TYPE_CHECKING:
    from trainer.run import Run


@dataclass(frozen=True)
class Size:
    """What one example costs in a micro-batch: its sequences' lengths (1 for SFT, 2 for a pair)."""

    lengths: tuple[int, ...]

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    @property
    def longest(self) -> int:
        return max(self.lengths)


def preference_size(f: PreferenceFeatures) -> Size:
    return Size((len(f.prompt_ids) + len(f.chosen_ids), len(f.prompt_ids) + len(f.rejected_ids)))


def sft_size(f: SFTFeatures) -> Size:
    return Size((len(f.input_ids),))


def micro_batches(
    indices: list[int], sizes: Sequence[Size], max_rows: int, max_tokens: int | None, packed: bool
) -> list[list[int]]:
    """Cut `indices` into micro-batches of at most `max_rows` examples and `max_tokens` tokens.

    Without a token budget the examples keep their order and are taken `max_rows` at a time (as before
    padding-free existed). With one they are sorted by length (longest first) so that neighbours pad
    little, and each micro-batch grows until the next example would pass the budget; an example longer
    than the budget on its own gets a micro-batch of its own.
    """
    if max_tokens is None:
        return [indices[i : i + max_rows] for i in range(0, len(indices), max_rows)]
    order = sorted(indices, key=lambda i: (-sizes[i].longest, i))
    out: list[list[int]] = []
    part: list[int] = []
    for i in order:
        candidate = [*part, i]
        if part and (len(candidate) > max_rows or _cost(candidate, sizes, packed) > max_tokens):
            out.append(part)
            candidate = [i]
        part = candidate
    if part:
        out.append(part)
    return out


def _cost(part: list[int], sizes: Sequence[Size], packed: bool) -> int:
    if packed:
        return sum(sizes[i].tokens for i in part)
    rows = sum(len(sizes[i].lengths) for i in part)
    return rows * max(sizes[i].longest for i in part)


# --- collation -----------------------------------------------------------------------------------


def preference_sequences(features: Sequence[PreferenceFeatures]) -> tuple[list[list[int]], list[list[int]]]:
    """(token ids, labels) of every chosen sequence, then every rejected one (2B sequences)."""
    seqs = [f.prompt_ids + f.chosen_ids for f in features] + [f.prompt_ids + f.rejected_ids for f in features]
    labels = [[IGNORE] * len(f.prompt_ids) + f.chosen_ids for f in features] + [
        [IGNORE] * len(f.prompt_ids) + f.rejected_ids for f in features
    ]
    return seqs, labels


def collate(
    seqs: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int, packed: bool
) -> dict[str, torch.Tensor]:
    """A model batch of S sequences, padded (S, T) or packed (1, N), with what reading it back needs.

    Keys: input_ids; attention_mask (padded) or position_ids (packed); labels (IGNORE where no loss,
    including each packed sequence's first token, so no sequence predicts its neighbour's start);
    seq_ids (same shape: which sequence each position belongs to, -1 on padding); last (S,): the flat
    index of each sequence's last token that is not pad_id, the token whose output a decoder
    sequence classifier scores (transformers' rule: the rightmost non-pad token, else the first).
    """
    n = len(seqs)
    lasts = [max((j for j, t in enumerate(s) if t != pad_id), default=0) for s in seqs]
    if not packed:
        width = max(len(s) for s in seqs)
        seq_ids = pad([[i] * len(s) for i, s in enumerate(seqs)], -1)  # (S, T)
        return {
            "input_ids": pad(seqs, pad_id),
            "attention_mask": pad([[1] * len(s) for s in seqs], 0),
            "labels": pad(labels, IGNORE),
            "seq_ids": seq_ids,
            "last": torch.tensor([i * width + j for i, j in enumerate(lasts)], dtype=torch.long),
        }
    starts = [0]
    for s in seqs[:-1]:
        starts.append(starts[-1] + len(s))
    flat_labels: list[int] = []
    for lab in labels:
        flat_labels.extend([IGNORE, *lab[1:]])
    return {
        "input_ids": torch.tensor([[t for s in seqs for t in s]], dtype=torch.long),  # (1, N)
        "position_ids": torch.tensor([[p for s in seqs for p in range(len(s))]], dtype=torch.long),
        "labels": torch.tensor([flat_labels], dtype=torch.long),
        "seq_ids": torch.tensor([[i for i, s in enumerate(seqs) for _ in s]], dtype=torch.long),
        "last": torch.tensor([starts[i] + lasts[i] for i in range(n)], dtype=torch.long),
    }


def pair_batch(features: Sequence[PreferenceFeatures], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    """The chosen sequences, then the rejected ones, of these pairs: one batch for one forward (DPO, reward)."""
    seqs, labels = preference_sequences(features)
    return collate(seqs, labels, pad_id, packed)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keyword arguments of the model forward for a `collate` batch. Never a KV cache: training does not
    decode, and a cache costs a copy of every layer's keys and values (packed, it would also disable
    transformers' packed-sequence mask)."""
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}


# --- a padded batch as forwards of similar lengths ------------------------------------------------

SPLIT_BY_LENGTH: bool | None = None
"""Run a padded batch as forwards of rows of similar length (`forward_groups`): None = on CPU only."""
MAX_PADDING = 0.125
"""Largest fraction of a forward's (rows x longest) area that `length_groups` lets padding take."""


def length_groups(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Row indices grouped by length so that each group, padded to its longest, is at most `max_padding` padding.

    Longest first; a group grows while its padding stays within the bound, so equal lengths always share
    a group (equal-length data stays one forward).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            group = groups[-1]
            area = lengths[group[0]] * (len(group) + 1)
            real = sum(lengths[j] for j in group) + lengths[i]
            if area - real <= max_padding * area:
                group.append(i)
                continue
        groups.append([i])
    return groups


def forward_groups(batch: dict[str, torch.Tensor]) -> list[list[int]]:
    """How a `collate` batch's rows are run: one forward of all rows (packed, or padded on a GPU, where batching
    pays), or on CPU `length_groups` of the padded rows. On CPU a matmul over ~100+ tokens runs near the
    machine's rate whatever the batch, so rows of similar length run apart at no loss and padding costs no FLOP;
    attention without padding also takes the causal fast path (no mask). The values do not depend on it."""
    rows = list(range(batch["input_ids"].shape[0]))
    if "attention_mask" not in batch:
        return [rows]
    split = splits_by_length(batch["input_ids"].device)
    return length_groups(batch["attention_mask"].sum(1).tolist()) if split else [rows]


def splits_by_length(device: torch.device) -> bool:
    """Whether padded batches on `device` run as `length_groups` (SPLIT_BY_LENGTH, else on CPU only)."""
    return SPLIT_BY_LENGTH if SPLIT_BY_LENGTH is not None else device.type == "cpu"


def sub_batch(batch: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """Rows `rows` of a padded `collate` batch, in that order, cut to their longest (the batch itself when `rows`
    is all of it in order). Its `seq_ids` still name the whole batch's rows; `last` is left out."""
    if "attention_mask" not in batch or rows == list(range(batch["input_ids"].shape[0])):
        return batch
    index = torch.tensor(rows, device=batch["input_ids"].device)
    width = int(batch["attention_mask"][index].sum(1).max())
    return {k: v[index, :width] for k, v in batch.items() if v.dim() == 2}


# --- is packing exact for this model? ------------------------------------------------------------


def packing_is_exact(
    model: Any, causal: bool, vocab_size: int, pad_id: int, log: Callable[[str], None] | None = None
) -> bool:
    """Whether `model` gives a packed row the same hidden states as the padded batch (checked on 2 short rows).

    A model that ignores the position-id restarts (e.g. an encoder that builds a bidirectional mask
    from attention_mask only, or custom code) would let the second sequence attend to the first; such a
    model trains padded instead.
    """
    ids = [t for t in range(vocab_size) if t != pad_id]
    if len(ids) < 12:
        return False
    seqs = [ids[1:6], ids[6:13] if len(ids) > 13 else ids[6:12]]
    labels = [list(s) for s in seqs]
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            padded = collate(seqs, labels, pad_id, packed=False)
            packed = collate(seqs, labels, pad_id, packed=True)
            a = last_hidden(model, {k: v.to(param.device) for k, v in padded.items()}, causal)  # (2, T, d)
            b = last_hidden(model, {k: v.to(param.device) for k, v in packed.items()}, causal)  # (1, N, d)
    except Exception as exc:  # any refusal of position_ids without a mask means: do not pack
        if log:
            log(f"padding_free: the model cannot run packed rows ({type(exc).__name__}: {exc}); padding instead")
        return False
    finally:
        model.train(was_training)
    a_real = a.reshape(-1, a.shape[-1])[padded["seq_ids"].reshape(-1) >= 0].float()
    b_real = b.reshape(-1, b.shape[-1]).float()
    if not bool(torch.isfinite(a_real).all()):
        return False  # broken weights: train padded, where the NaN check names the problem
    tolerance = 1e-3 if param.dtype == torch.float32 else 5e-2
    exact = bool(torch.allclose(a_real, b_real, rtol=tolerance, atol=tolerance * float(a_real.abs().max())))
    if not exact and log:
        log(
            "padding_free: this model's packed rows differ from padded ones (its attention mask ignores the "
            "position ids); training padded instead"
        )
    return exact


def last_hidden(model: Any, batch: dict[str, torch.Tensor], causal: bool) -> torch.Tensor:
    """The final (normed) hidden states (B, T, d) of a causal LM or sequence classifier, without LM-head logits.

    A causal LM gets logits_to_keep=1, so its vocabulary head runs on one position per row instead of all.
    """
    extra: dict[str, Any] = {"output_hidden_states": True}
    if causal:
        extra["logits_to_keep"] = 1
    out = model(**model_inputs(batch), **extra)
    return out.hidden_states[-1]


# --- what an algorithm calls ---------------------------------------------------------------------


def use_padding_free(run: Run, model: Any, causal: bool, tokenizer: Any) -> bool:
    """Whether this run packs: padding_free is on and packing is exact for the loaded model (logged)."""
    if not getattr(run.config, "padding_free", False):
        return False
    exact = packing_is_exact(model, causal, len(tokenizer), tokenizer.pad_token_id, run.events.log)
    if exact:
        run.events.log("padding_free: each micro-batch is packed into one row (per-sequence position ids)")
    return exact


def examples_per_pass(run: Run) -> int:
    """Most examples one forward/backward pass takes: micro_batch, except on CPU when the user set neither
    micro_batch_size nor max_tokens_per_batch: one. A CPU pass already runs its rows as forwards of similar
    length (`forward_groups`), so batching several examples buys no speed there, but holds all their
    activations until backward; one example at a time changes no loss or gradient (trainer.loop.accumulate
    weights each micro-batch by its share of the step). GPUs keep batched passes."""
    config = run.config
    unset = config.micro_batch_size is None and getattr(config, "max_tokens_per_batch", None) is None
    return 1 if unset and run.device.type == "cpu" else config.micro_batch


def partition(run: Run, sizes: Sequence[Size], packed: bool) -> Callable[[list[int]], list[list[int]]]:
    """How `trainer.loop.accumulate` cuts a process's share of a step: `micro_batches` with the run's limits."""
    max_tokens = getattr(run.config, "max_tokens_per_batch", None)
    rows = examples_per_pass(run)
    return lambda indices: micro_batches(indices, sizes, rows, max_tokens, packed)


def pass_tokens(part: list[int], sizes: Sequence[Size], packed: bool, device: torch.device) -> int:
    """Tokens the forwards of micro-batch `part` run (and keep activations of until backward): its real tokens
    when packed or split by length on CPU (`forward_groups`), else its rows x its longest (one padded forward)."""
    if packed or splits_by_length(device):
        return sum(sizes[i].tokens for i in part)
    return _cost(part, sizes, packed=False)


def checkpoint_rule(run: Run, model: Any, sizes: Sequence[Size], packed: bool) -> Callable[[list[int]], None] | None:
    """gradient_checkpointing "auto" (trainer.config.auto_checkpoints): a callable that, before each training
    micro-batch, turns the model's checkpointing on or off for it; None when the setting is true or false.
    The free memory is read once, here (call it when the model is loaded and on its device), less what the
    first optimizer step allocates (gradients and AdamW state of the trainable parameters)."""
    if getattr(run.config, "gradient_checkpointing", False) != "auto":
        return None
    switch = SwitchableCheckpointing(model)
    shape = switch.config
    dtype_bytes = next(model.parameters()).element_size()
    intermediate = getattr(shape, "intermediate_size", None) or 4 * shape.hidden_size  # GPT-2 & co. leave it out
    per_token = activation_bytes_per_token(shape.hidden_size, intermediate, shape.num_hidden_layers, dtype_bytes)
    # what the first optimizer step will still allocate: the trainable parameters' gradients and AdamW's 2 states
    reserve = 3 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    free = max(free_memory_bytes(run) - reserve, 0)
    mib = 2**20
    run.events.log(
        f"gradient_checkpointing auto: a micro-batch is checkpointed when its activations (~{per_token / mib:.2f} "
        f"MiB/token) would exceed half of the {free / mib:.0f} MiB free ({free / 2 / per_token:.0f} tokens)"
    )

    def before(part: list[int]) -> None:
        switch.set(auto_checkpoints(pass_tokens(part, sizes, packed, run.device), per_token, free))

    return before


def real_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Tokens of a `collate` batch that are not padding."""
    return int((batch["seq_ids"] >= 0).sum())
