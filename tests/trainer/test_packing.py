"""Padding-free batches and chunked log-probs change no loss, no gradient and no loss series (trainer.packing)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.tiny import build_tiny_model
from tests.trainer.conftest import Result
from tests.trainer.test_algorithms import base_spec
from trainer.config import DPOConfig, LoraConfig, RewardConfig
from trainer.data import IGNORE, PreferenceFeatures
from trainer.logprobs import batch_sequence_logps, chunked_token_logprobs, token_logprobs
from trainer.models import apply_lora, load_model
from trainer.packing import Size, collate, length_groups, micro_batches, packing_is_exact, pair_batch

PAD = 259  # <|pad|> of the tiny tokenizer (256 bytes, then 4 special tokens)


def _random_sequences(lengths: list[int], prompt: int, seed: int = 0) -> tuple[list[list[int]], list[list[int]]]:
    generator = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, 256, (n,), generator=generator).tolist() for n in lengths]
    labels = [[IGNORE] * prompt + s[prompt:] for s in seqs]
    return seqs, labels


def _pairs(seed: int = 0) -> list[PreferenceFeatures]:
    generator = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(0, 256, (n,), generator=generator).tolist()

    return [PreferenceFeatures(ids(p), ids(c), ids(r)) for p, c, r in [(5, 3, 9), (12, 7, 2), (3, 11, 6)]]


@pytest.fixture(scope="module")
def tiny_seqcls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_seqcls") / "model", "seqcls")


def _model(path: Path, kind: str, lora: bool) -> Any:
    model = load_model(str(path), kind, pad_token_id=PAD)  # type: ignore[arg-type]
    if lora:
        model = apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.0), kind)  # type: ignore[arg-type]
        # A fresh adapter's B is zero; give it weights so the adapter changes the forward and gets gradients.
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(std=0.1)
    return model


def _loss_and_grads(model: Any, loss_of: Callable[[Any], torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_of(model)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss), grads


def _assert_same(a: tuple[float, dict[str, torch.Tensor]], b: tuple[float, dict[str, torch.Tensor]]) -> None:
    assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6)
    assert a[1].keys() == b[1].keys() and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-6, msg=name)


# --- the mask transformers builds from packed position ids ----------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_packed_row_gives_every_sequence_the_logits_it_gets_alone(tiny_model: Path, attn: str) -> None:
    model = load_model(str(tiny_model)).eval()
    model.config._attn_implementation = attn
    seqs, labels = _random_sequences([7, 12, 4], prompt=2)
    packed = collate(seqs, labels, PAD, packed=True)
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([s])).logits[0] for s in seqs])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    assert packing_is_exact(model, True, 260, PAD)


def test_packing_is_refused_for_a_model_whose_mask_ignores_the_position_ids(tiny_model: Path) -> None:
    model = load_model(str(tiny_model))

    class NoPositions(torch.nn.Module):  # attends across the whole row, as an encoder's bidirectional mask would
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, position_ids: Any = None, **kwargs: Any) -> Any:
            return self.inner(**kwargs)

    logs: list[str] = []
    assert not packing_is_exact(NoPositions(), True, 260, PAD, logs.append)
    assert logs and "padded" in logs[0]


def test_collate_masks_each_packed_sequence_start_and_points_at_its_last_non_pad_token() -> None:
    seqs = [[1, 2, 3], [4, 5], [6, PAD, PAD]]  # the last one ends with pad tokens (pad = EOS in some models)
    labels = [[IGNORE, 2, 3], [4, 5], [IGNORE, PAD, PAD]]
    packed = collate(seqs, labels, PAD, packed=True)
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    assert packed["labels"].tolist() == [[IGNORE, 2, 3, IGNORE, 5, IGNORE, PAD, PAD]]
    assert packed["seq_ids"].tolist() == [[0, 0, 0, 1, 1, 2, 2, 2]]
    assert packed["last"].tolist() == [2, 4, 5]
    padded = collate(seqs, labels, PAD, packed=False)
    assert padded["last"].tolist() == [2, 3 + 1, 6]
    assert padded["seq_ids"].tolist() == [[0, 0, 0], [1, 1, -1], [2, 2, 2]]


# --- chunked log-probs ----------------------------------------------------------------------------


def test_chunked_token_logprobs_equal_the_full_logits_computation_in_values_and_gradients() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True)
    hidden = torch.randn(23, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    weights = torch.randn(23)  # a loss that weights tokens differently, so every gradient entry is tested

    full = token_logprobs(head(hidden).unsqueeze(0), targets.unsqueeze(0), temperature=0.7).squeeze(0)
    (full * weights).sum().backward()
    expected = hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()
    hidden.grad = head.weight.grad = head.bias.grad = None

    chunked = chunked_token_logprobs(hidden, targets, head, temperature=0.7, chunk=5)  # 5 chunks, the last short
    (chunked * weights).sum().backward()
    torch.testing.assert_close(chunked, full)
    for got, want in zip((hidden.grad, head.weight.grad, head.bias.grad), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_sequence_logps_from_hidden_states_equal_the_sum_over_full_logits(tiny_model: Path) -> None:
    model = load_model(str(tiny_model))
    seqs, labels = _random_sequences([9, 14, 6], prompt=3)
    batch = collate(seqs, labels, PAD, packed=False)
    sums, counts = batch_sequence_logps(model, batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    expected = (token_logprobs(logits[:, :-1], targets.masked_fill(~mask, 0)) * mask).sum(-1)
    torch.testing.assert_close(sums, expected, rtol=1e-5, atol=1e-5)
    assert counts.tolist() == [6, 11, 3]


# --- packed vs padded: the same losses and gradients ----------------------------------------------


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_dpo_loss_and_gradients_are_the_same_packed_and_padded(tiny_model: Path, lora: bool) -> None:
    from trainer.dpo import concatenated_logps, pair_metrics

    model = _model(tiny_model, "causal", lora)
    pairs = _pairs()
    ref = torch.tensor([[-30.0, -40.0], [-25.0, -12.0], [-20.0, -33.0]])
    config = DPOConfig()

    def loss_of(packed: bool) -> Callable[[Any], torch.Tensor]:
        def run(m: Any) -> torch.Tensor:
            logps, lengths = concatenated_logps(m, pair_batch(pairs, PAD, packed))
            return pair_metrics(config, logps, lengths, ref)[0]

        return run

    _assert_same(_loss_and_grads(model, loss_of(True)), _loss_and_grads(model, loss_of(False)))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reward_loss_and_gradients_are_the_same_packed_and_padded(tiny_seqcls: Path, lora: bool) -> None:
    from trainer.reward import pair_metrics, pair_scores

    model = _model(tiny_seqcls, "seqcls", lora)
    pairs = _pairs(seed=1)

    def loss_of(packed: bool) -> Callable[[Any], torch.Tensor]:
        def run(m: Any) -> torch.Tensor:
            chosen, rejected = pair_scores(m, pair_batch(pairs, PAD, packed))
            return pair_metrics(RewardConfig(), chosen, rejected, None)[0]

        return run

    _assert_same(_loss_and_grads(model, loss_of(True)), _loss_and_grads(model, loss_of(False)))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_loss_and_gradients_are_the_same_packed_and_padded(tiny_model: Path, lora: bool) -> None:
    from trainer.sft import completion_nll

    model = _model(tiny_model, "causal", lora)
    seqs, labels = _random_sequences([8, 15, 5, 11], prompt=3, seed=2)

    def loss_of(packed: bool) -> Callable[[Any], torch.Tensor]:
        return lambda m: completion_nll(m, collate(seqs, labels, PAD, packed))[0]

    _assert_same(_loss_and_grads(model, loss_of(True)), _loss_and_grads(model, loss_of(False)))


# --- a padded batch run as forwards of similar lengths: the same losses and gradients --------------


def test_length_groups_bound_the_padding_and_cover_every_row_once() -> None:
    lengths = [300, 1000, 980, 40, 310, 1000, 35, 500]
    groups = length_groups(lengths, max_padding=0.125)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert groups[0] == [1, 5, 2]  # longest first; 980 pads 2% of a 3 x 1000 area
    for g in groups:
        area = len(g) * max(lengths[i] for i in g)
        assert area - sum(lengths[i] for i in g) <= 0.125 * area
    assert length_groups([7, 7, 7]) == [[0, 1, 2]]  # equal lengths: one forward, as before
    assert length_groups([5, 9], max_padding=1.0) == [[1, 0]]


def test_a_reward_batch_scores_its_rows_in_batch_order_whatever_the_forward_groups(
    tiny_seqcls: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import packing
    from trainer.reward import pair_scores

    model = _model(tiny_seqcls, "seqcls", False)
    generator = torch.Generator().manual_seed(5)
    ids = [torch.randint(0, 256, (n,), generator=generator).tolist() for n in (14, 24, 23, 23, 9, 30)]
    # rows of 24, 23, 25, 25 tokens: one forward group, longest first, so not in batch order
    pairs = [
        PreferenceFeatures(ids[1][:2], ids[1][2:], ids[2]),
        PreferenceFeatures(ids[3][:3], ids[3][3:], ids[1][:22]),
    ]
    assert packing.length_groups([24, 23, 25, 25]) == [[2, 3, 0, 1]]
    wide = [*pairs, PreferenceFeatures(ids[4][:1], ids[4][1:], ids[5])]
    for batch_pairs in (pairs, wide):  # one group of all rows in length order, then several groups
        batch = pair_batch(batch_pairs, PAD, False)
        monkeypatch.setattr(packing, "SPLIT_BY_LENGTH", False)
        want = pair_scores(model, batch)
        monkeypatch.setattr(packing, "SPLIT_BY_LENGTH", True)
        got = pair_scores(model, batch)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("algorithm", ["dpo", "reward", "sft"])
def test_split_forwards_give_the_one_padded_forward_s_loss_and_gradients(
    tiny_model: Path, tiny_seqcls: Path, algorithm: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer import packing

    pairs = _pairs(seed=4)
    ref = torch.tensor([[-30.0, -40.0], [-25.0, -12.0], [-20.0, -33.0]])
    if algorithm == "dpo":
        from trainer.dpo import concatenated_logps
        from trainer.dpo import pair_metrics as dpo_metrics

        model = _model(tiny_model, "causal", True)

        def loss_of(m: Any) -> torch.Tensor:
            logps, lengths = concatenated_logps(m, pair_batch(pairs, PAD, False))
            return dpo_metrics(DPOConfig(), logps, lengths, ref)[0]
    elif algorithm == "reward":
        from trainer.reward import pair_metrics, pair_scores

        model = _model(tiny_seqcls, "seqcls", True)

        def loss_of(m: Any) -> torch.Tensor:
            chosen, rejected = pair_scores(m, pair_batch(pairs, PAD, False))
            return pair_metrics(RewardConfig(), chosen, rejected, None)[0]
    else:
        from trainer.sft import completion_nll

        model = _model(tiny_model, "causal", False)
        seqs, labels = _random_sequences([8, 15, 5, 11, 15], prompt=3, seed=2)

        def loss_of(m: Any) -> torch.Tensor:
            return completion_nll(m, collate(seqs, labels, PAD, False))[0]

    calls: list[int] = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    monkeypatch.setattr(packing, "SPLIT_BY_LENGTH", False)
    one = _loss_and_grads(model, loss_of)
    assert len(calls) == 1
    monkeypatch.setattr(packing, "SPLIT_BY_LENGTH", True)
    split = _loss_and_grads(model, loss_of)
    assert len(calls) > 2  # several forwards
    _assert_same(split, one)


# --- micro-batches by a token budget --------------------------------------------------------------


def test_micro_batches_fill_a_token_budget_longest_first_and_cover_every_example_once() -> None:
    sizes = [Size((n,)) for n in [30, 5, 50, 12, 70, 8, 20]]
    parts = micro_batches(list(range(7)), sizes, max_rows=3, max_tokens=64, packed=True)
    assert sorted(i for part in parts for i in part) == list(range(7))
    assert parts[0] == [4]  # 70 tokens: over the budget alone, so alone
    for part in parts:
        assert len(part) <= 3
        assert len(part) == 1 or sum(sizes[i].tokens for i in part) <= 64
    padded = micro_batches(list(range(7)), sizes, max_rows=8, max_tokens=64, packed=False)
    for part in padded:  # padded cost: rows x longest
        assert len(part) == 1 or len(part) * max(sizes[i].longest for i in part) <= 64
    assert micro_batches([3, 1, 2], sizes, max_rows=2, max_tokens=None, packed=True) == [[3, 1], [2]]


# --- whole runs -----------------------------------------------------------------------------------

RUNS = {
    "dpo": ("dpo", "pref.jsonl", {}),
    "reward": ("reward", "pref_standard.jsonl", {}),
    "sft": ("sft", "sft.jsonl", {}),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_padding_free_and_token_budget_runs_give_the_padded_run_s_loss_series(
    run_inprocess: Callable[..., Result], tiny_model: Path, tiny_seqcls: Path, data_dir: Path, name: str
) -> None:
    algorithm, train, extra = RUNS[name]
    model = tiny_seqcls if algorithm == "reward" else tiny_model
    hyper = {"batch_size": 4, "max_steps": 4, "gradient_checkpointing": False, **extra}

    def losses(output: str, **more: Any) -> dict[int, float]:
        result = run_inprocess(base_spec(model, data_dir, algorithm, train, **{**hyper, **more}), output=output)
        assert result.code == 0, result.events[-3:]
        packed = any("each micro-batch is packed" in e["message"] for e in result.of_type("log"))
        assert packed == more["padding_free"]
        return result.losses()

    padded = losses("padded", padding_free=False, micro_batch_size=2)
    packed = losses("packed", padding_free=True, micro_batch_size=2)
    budget = losses("budget", padding_free=True, max_tokens_per_batch=64, gradient_checkpointing=True)
    assert len(padded) == 4
    assert packed == pytest.approx(padded, rel=1e-4, abs=1e-5)
    assert budget == pytest.approx(padded, rel=1e-4, abs=1e-5)


def test_sft_loss_does_not_depend_on_micro_batch_size(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path
) -> None:
    def losses(output: str, **more: Any) -> dict[int, float]:
        spec = base_spec(tiny_model, data_dir, "sft", "sft.jsonl", batch_size=4, max_steps=3, **more)
        result = run_inprocess(spec, output=output)
        assert result.code == 0, result.events[-3:]
        return result.losses()

    assert losses("one", micro_batch_size=1) == pytest.approx(losses("all"), rel=1e-4, abs=1e-5)
