"""Tokenisation, prompt masking and the truncation policy of trainer.data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.data import (
    IGNORE,
    DataError,
    encode_preferences,
    encode_prompt,
    encode_sft,
    pack_sft,
    render,
)
from trainer.formats import PreferenceExample, SFTExample
from trainer.models import load_tokenizer
from trainer.packing import pair_batch


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path):  # type: ignore[no-untyped-def]
    return load_tokenizer(str(tiny_model))


def test_conversational_rows_go_through_the_chat_template(tokenizer) -> None:  # type: ignore[no-untyped-def]
    prompt, completion, templated = render(
        tokenizer, [{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}]
    )
    assert templated
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert completion == "yo<|im_end|>\n"


def test_plain_strings_are_tokenised_as_is_and_end_with_eos(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encode_preferences([PreferenceExample("Q: ", "yes", "no")], tokenizer, 64, 16)
    f = enc.features[0]
    assert tokenizer.decode(f.prompt_ids) == "Q: "
    assert f.chosen_ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(f.chosen_ids[:-1]) == "yes"


def test_prompt_is_cut_from_the_left_and_completion_from_the_right(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = PreferenceExample("abcdefghij", "0123456789", "zyxwvutsrq")
    enc = encode_preferences([ex, PreferenceExample("a", "b", "c")], tokenizer, max_length=10, max_prompt_length=4)
    f = enc.features[0]
    assert tokenizer.decode(f.prompt_ids) == "ghij"
    assert tokenizer.decode(f.chosen_ids) == "012345"
    assert enc.report.truncated == 1 and enc.report.rows == 2 and enc.report.dropped == 0


def test_pairs_identical_after_truncation_are_dropped_and_counted(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [PreferenceExample("p", "same start A", "same start B"), PreferenceExample("p", "x", "y")]
    enc = encode_preferences(rows, tokenizer, max_length=6, max_prompt_length=1)
    assert enc.report.dropped == 1 and len(enc.features) == 1


def test_every_row_too_long_is_an_error_that_names_the_limit(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [PreferenceExample("prompt", "a long answer", "another long answer")] * 3
    with pytest.raises(DataError, match="max_length=8"):
        encode_preferences(rows, tokenizer, max_length=8, max_prompt_length=4)


def test_preference_batch_masks_prompt_and_padding_out_of_the_labels(tokenizer) -> None:  # type: ignore[no-untyped-def]
    enc = encode_preferences([PreferenceExample("pp", "c", "rrr"), PreferenceExample("q", "cc", "r")], tokenizer, 32, 8)
    batch = pair_batch(enc.features, tokenizer.pad_token_id, packed=False)
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    first = enc.features[0]
    labels = batch["labels"][0]
    assert (labels[: len(first.prompt_ids)] == IGNORE).all()
    n = len(first.prompt_ids) + len(first.chosen_ids)
    assert labels[len(first.prompt_ids) : n].tolist() == first.chosen_ids
    assert (labels[n:] == IGNORE).all()
    assert batch["attention_mask"][0].sum() == n


def test_sft_masks_the_prompt_only_when_completion_only(tokenizer) -> None:  # type: ignore[no-untyped-def]
    ex = [SFTExample([{"role": "user", "content": "hi"}], [{"role": "assistant", "content": "yo"}])]
    masked = encode_sft(ex, tokenizer, 64, 32).features[0]
    full = encode_sft(ex, tokenizer, 64, 32, completion_only=False).features[0]
    n_completion = len(tokenizer("yo<|im_end|>\n", add_special_tokens=False)["input_ids"])
    assert sum(label != IGNORE for label in masked.labels) == n_completion
    assert full.labels == full.input_ids


def test_packing_fills_sequences_to_max_length(tokenizer) -> None:  # type: ignore[no-untyped-def]
    rows = [SFTExample("p", "abcdefgh")] * 5
    features = encode_sft(rows, tokenizer, 64, 8).features
    packed = pack_sft(features, 16)
    total = sum(len(f.input_ids) for f in features)
    assert sum(len(p.input_ids) for p in packed) == total
    assert all(len(p.input_ids) == 16 for p in packed[:-1])
    assert torch.tensor(packed[0].labels).ne(IGNORE).any()


def test_online_prompts_are_cut_like_every_other_prompt_keeping_the_leading_cls(minilm: Path) -> None:
    """GRPO/PPO prompts go through the same encoder as DPO's: cut from the left, the leading [CLS]/BOS kept."""
    encoder = load_tokenizer(str(minilm))
    prompt = "one two three four five six seven eight nine ten"
    ids = encode_prompt(encoder, prompt, max_prompt_length=5)
    assert len(ids) == 5 and ids[0] == encoder.cls_token_id
    preference = encode_preferences([PreferenceExample(prompt, "yes", "no")], encoder, 64, 5).features[0]
    assert ids == preference.prompt_ids


def test_chat_prompts_to_complete_end_with_the_generation_prompt(tokenizer) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": "hi"}]
    ids = encode_prompt(tokenizer, messages, max_prompt_length=64)
    assert tokenizer.decode(ids) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    conversation = encode_preferences(
        [PreferenceExample(messages, [{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}])],
        tokenizer,
        64,
        64,
    )
    assert ids == conversation.features[0].prompt_ids
