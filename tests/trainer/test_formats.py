"""Row formats: LLaMA-Factory's shapes are read as LLaMA-Factory reads them, and unknown shapes are refused
with a message that lists every shape we accept.

Real rows come from data/ (LLaMA-Factory's own demo files, see data/SOURCES.md). Rows built by hand
below are marked HAND-MADE; they cover shapes no real file in data/ has (Alpaca preference, the
role/content tag variant, a top-level "system") and the refusals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedTokenizerBase

from tests.shared_data import shared_data
from tests.trainer.conftest import Result
from trainer.data import encode_preferences, encode_sft, render
from trainer.formats import (
    FORMATS,
    SHAPES,
    TOOLS_HEADER,
    PreferenceExample,
    RowError,
    SFTExample,
    detect_format,
    parse_row,
    read_examples,
)
from trainer.models import load_tokenizer

DPO_DEMO = "llamafactory-dpo-en-demo.jsonl"
TOOLCALL_DEMO = "llamafactory-glaive-toolcall-en-demo.jsonl"


def rows(name: str) -> list[dict[str, Any]]:
    with open(shared_data(name), encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def refusal(row: Any, fmt: str | None = None) -> RowError:
    with pytest.raises(RowError) as info:
        parse_row(row, fmt or detect_format(row))
    return info.value


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> PreTrainedTokenizerBase:
    """The tests' tiny model's tokenizer: a ChatML template that renders every role, "tool" included."""
    return load_tokenizer(str(tiny_model))


# ---- every shape in the refusal is one we take ------------------------------------------------------


def test_every_format_has_an_example_that_is_detected_as_that_format_and_parses() -> None:
    assert set(SHAPES) == set(FORMATS)
    for fmt, (_, example) in SHAPES.items():
        row = json.loads(example.split(" (or ")[0])
        assert detect_format(row) == fmt
        parse_row(row, fmt)


def test_an_unknown_shape_is_refused_with_its_keys_and_every_accepted_shape_with_an_example() -> None:
    with pytest.raises(RowError) as info:
        detect_format({"question_text": "2+2?", "good": "4", "bad": "5"})
    message = info.value.message
    assert message.startswith("unrecognised row shape (keys: bad, good, question_text). Accepted shapes: ")
    for fmt, (name, example) in SHAPES.items():
        assert f"{name} ({fmt}) {example}" in message
    assert '{"conversations": [{"from": "human", "value": "2+2?"}], "chosen": {"from": "gpt"' in message


def test_a_line_that_is_not_an_object_also_lists_the_accepted_shapes() -> None:
    with pytest.raises(RowError) as info:
        detect_format([{"from": "human", "value": "hi"}])
    assert info.value.message.startswith("each line must be a JSON object, got list. Accepted shapes: ")


# ---- ShareGPT preference: LLaMA-Factory's data/dpo_en_demo.json (real) -------------------------------


def test_the_sharegpt_dpo_demo_is_a_preference_dataset_whose_every_row_parses() -> None:
    fmt, examples = read_examples(str(shared_data(DPO_DEMO)), kind="preference")
    assert fmt == "sharegpt_preference" and FORMATS[fmt] == "preference"
    assert len(examples) == 40 and all(isinstance(e, PreferenceExample) for e in examples)


def test_sharegpt_dpo_rows_become_the_conversation_as_prompt_and_the_two_gpt_replies() -> None:
    demo = rows(DPO_DEMO)
    for row in demo:
        ex = parse_row(row, "sharegpt_preference")
        assert isinstance(ex, PreferenceExample)
        role = {"human": "user", "gpt": "assistant", "system": "system"}
        assert ex.prompt == [{"role": role[m["from"]], "content": m["value"]} for m in row["conversations"]]
        assert ex.chosen == [{"role": "assistant", "content": row["chosen"]["value"]}]
        assert ex.rejected == [{"role": "assistant", "content": row["rejected"]["value"]}]
    # the demo has single-turn rows, rows led by a system turn and multi-turn rows: all three are covered
    assert any(r["conversations"][0]["from"] == "system" for r in demo)
    assert any(any(m["from"] == "gpt" for m in r["conversations"]) for r in demo)


def test_a_sharegpt_dpo_row_goes_through_the_chat_template_with_only_the_reply_as_completion(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    row = next(r for r in rows(DPO_DEMO) if r["conversations"][0]["from"] == "system")
    ex = parse_row(row, "sharegpt_preference")
    assert isinstance(ex, PreferenceExample)
    prompt, completion, templated = render(tokenizer, ex.prompt, ex.chosen)
    assert templated
    system, human = row["conversations"]
    assert prompt == (
        f"<|im_start|>system\n{system['value']}<|im_end|>\n"
        f"<|im_start|>user\n{human['value']}<|im_end|>\n<|im_start|>assistant\n"
    )
    assert completion == row["chosen"]["value"] + "<|im_end|>\n"
    enc = encode_preferences([ex], tokenizer, max_length=8192, max_prompt_length=4096)
    f = enc.features[0]
    assert tokenizer.decode(f.prompt_ids) == prompt
    assert tokenizer.decode(f.rejected_ids) == row["rejected"]["value"] + "<|im_end|>\n"


def test_the_issues_sharegpt_dpo_row_no_longer_fails_as_an_implicit_prompt_row() -> None:
    row = rows(DPO_DEMO)[0]
    assert detect_format(row) == "sharegpt_preference"
    with pytest.raises(RowError, match='"chosen" must be a string or a list of messages'):
        parse_row(row, "implicit_prompt")  # what every ShareGPT DPO row answered before


def test_a_top_level_system_leads_the_prompt_unless_the_conversation_starts_with_one() -> None:
    # HAND-MADE rows: LLaMA-Factory's optional "system" column (no demo file uses it)
    row = {
        "conversations": [{"from": "human", "value": "2+2?"}],
        "chosen": {"from": "gpt", "value": "4"},
        "rejected": {"from": "gpt", "value": "5"},
        "system": "Answer with a number.",
    }
    ex = parse_row(row, detect_format(row))
    assert isinstance(ex, PreferenceExample)
    assert ex.prompt == [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "2+2?"},
    ]
    row["conversations"] = [{"from": "system", "value": "Be terse."}, *row["conversations"]]
    ex = parse_row(row, detect_format(row))
    assert isinstance(ex, PreferenceExample)
    assert ex.prompt[0] == {"role": "system", "content": "Be terse."} and len(ex.prompt) == 2


def test_the_role_content_tag_variant_with_chosen_and_rejected_is_sharegpt_preference() -> None:
    # HAND-MADE row: LLaMA-Factory's "messages" column with role/content tags (as in its kto/mllm demos)
    row = {
        "messages": [{"role": "user", "content": "2+2?"}],
        "chosen": {"role": "assistant", "content": "4"},
        "rejected": {"role": "assistant", "content": "5"},
    }
    assert detect_format(row) == "sharegpt_preference"
    assert parse_row(row, "sharegpt_preference") == PreferenceExample(
        [{"role": "user", "content": "2+2?"}],
        [{"role": "assistant", "content": "4"}],
        [{"role": "assistant", "content": "5"}],
    )


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"chosen": [{"from": "gpt", "value": "4"}]}, "chosen", '"chosen" must be one message, e.g. {"from": "gpt"'),
        ({"chosen": {"from": "human", "value": "4"}}, "chosen", '"chosen" must be a reply from "gpt"'),
        ({"rejected": {"from": "gpt", "value": "  "}}, "rejected", '"rejected" is empty'),
        ({"conversations": [{"from": "bot", "value": "hi"}]}, "conversations[0]", "unknown role 'bot'; one of: human"),
        ({"conversations": [{"from": ["human"], "value": "hi"}]}, "conversations[0]", "unknown role ['human']"),
        ({"conversations": [{"speaker": "human", "text": "hi"}]}, "conversations[0]", 'with "from" and "value"'),
        ({"conversations": []}, "conversations", "non-empty list of messages"),
        (
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
            "conversations",
            "must end with a human (or observation) turn",
        ),
        (
            {"conversations": [{"from": "human", "value": "hi"}, {"from": "system", "value": "x"}]},
            "conversations",
            "system message only as its first message",
        ),
        ({"system": ["x"]}, "system", '"system" must be a string'),
    ],
)
def test_bad_sharegpt_preference_rows_name_the_field_and_the_fix(
    change: dict[str, Any], field: str, message: str
) -> None:
    # HAND-MADE rows: one real demo row with one thing broken
    row = {**rows(DPO_DEMO)[0], **change}
    error = refusal(row, "sharegpt_preference")
    assert error.field == field and message in error.message


# ---- ShareGPT SFT: LLaMA-Factory's data/glaive_toolcall_en_demo.json (real) --------------------------


def test_the_sharegpt_toolcall_demo_is_an_sft_dataset_learning_the_last_gpt_turn() -> None:
    fmt, examples = read_examples(str(shared_data(TOOLCALL_DEMO)), kind="sft")
    assert fmt == "sharegpt" and FORMATS[fmt] == "sft"
    role = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
    for row, ex in zip(rows(TOOLCALL_DEMO), examples, strict=True):
        assert isinstance(ex, SFTExample)
        turns = [{"role": role[m["from"]], "content": m["value"]} for m in row["conversations"]]
        assert ex.completion == turns[-1:]  # every demo row ends with one gpt turn after a human/observation
        assert isinstance(ex.prompt, list)
        tools = json.loads(row["tools"])
        if tools:
            assert ex.prompt[0] == {"role": "system", "content": TOOLS_HEADER + row["tools"]}
            assert ex.prompt[1:] == turns[:-1]
        else:
            assert ex.prompt == turns[:-1]


def test_function_calls_are_assistant_turns_and_observations_tool_turns_in_the_template(
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    row = next(r for r in rows(TOOLCALL_DEMO) if any(m["from"] == "observation" for m in r["conversations"]))
    ex = parse_row(row, "sharegpt")
    assert isinstance(ex, SFTExample)
    call = next(m["value"] for m in row["conversations"] if m["from"] == "function_call")
    answer = next(m["value"] for m in row["conversations"] if m["from"] == "observation")
    prompt, completion, templated = render(tokenizer, ex.prompt, ex.completion)
    assert templated
    assert f"<|im_start|>assistant\n{call}<|im_end|>\n<|im_start|>tool\n{answer}<|im_end|>\n" in prompt
    assert completion == row["conversations"][-1]["value"] + "<|im_end|>\n"
    [f] = encode_sft([ex], tokenizer, max_length=8192, max_prompt_length=8192).features
    learned = [t for t, label in zip(f.input_ids, f.labels, strict=True) if label != -100]
    assert tokenizer.decode(learned) == completion


def test_sharegpt_sft_rows_are_read_like_the_same_conversation_in_openai_messages() -> None:
    # HAND-MADE from real rows: the OpenAI chat SFT demo rewritten with ShareGPT tags must read the same
    tag = {"system": "system", "user": "human", "assistant": "gpt"}
    for row in rows("gsm8k-openai-chat-sft.jsonl")[:20]:
        sharegpt = {"conversations": [{"from": tag[m["role"]], "value": m["content"]} for m in row["messages"]]}
        assert detect_format(sharegpt) == "sharegpt"
        assert parse_row(sharegpt, "sharegpt") == parse_row(row, "messages")
        tagged_messages = {"messages": sharegpt["conversations"]}
        assert detect_format(tagged_messages) == "sharegpt"
        assert parse_row(tagged_messages, "sharegpt") == parse_row(row, "messages")


def test_messages_with_llamafactory_roles_are_read_as_sharegpt() -> None:
    # HAND-MADE row: LLaMA-Factory's role/content tags keep its own role names for tool turns
    row = {
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "function_call", "content": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
            {"role": "observation", "content": '{"celsius": 3}'},
            {"role": "assistant", "content": "3 degrees."},
        ]
    }
    assert detect_format(row) == "sharegpt"
    ex = parse_row(row, "sharegpt")
    assert isinstance(ex, SFTExample) and isinstance(ex.prompt, list)
    assert [m["role"] for m in ex.prompt] == ["user", "assistant", "tool"]
    assert ex.completion == [{"role": "assistant", "content": "3 degrees."}]


def test_a_role_that_is_not_a_string_is_a_row_error_not_a_crash() -> None:
    # HAND-MADE rows: a list or object as a role used to raise TypeError (unhashable) out of the parser
    for row in ({"messages": [{"role": ["user"], "content": "hi"}]}, {"messages": [{"from": {}, "value": "hi"}]}):
        assert "unknown role" in refusal(row).message


def test_a_sharegpt_sft_row_must_end_with_a_gpt_turn() -> None:
    row = {"conversations": [{"from": "human", "value": "hi"}]}  # HAND-MADE
    error = refusal(row)
    assert error.field == "conversations" and "must end with an assistant message" in error.message


# ---- Alpaca: LLaMA-Factory's data/alpaca_en_demo.json (real) and its preference shape ---------------


def test_alpaca_demo_rows_become_instruction_and_input_as_the_user_turn() -> None:
    demo = rows("alpaca-en-demo.jsonl")
    fmt, examples = read_examples(str(shared_data("alpaca-en-demo.jsonl")), kind="sft")
    assert fmt == "alpaca" and len(examples) == len(demo) == 999
    with_input = next(i for i, r in enumerate(demo) if r["input"].strip())
    for i in (0, with_input):
        row, ex = demo[i], examples[i]
        user = f"{row['instruction']}\n\n{row['input']}" if row["input"].strip() else row["instruction"]
        assert ex == SFTExample([{"role": "user", "content": user}], [{"role": "assistant", "content": row["output"]}])


def test_alpaca_preference_rows_keep_system_and_history_before_the_instruction() -> None:
    # HAND-MADE from real rows: two alpaca-en-demo rows' outputs as chosen/rejected (no real Alpaca
    # preference file is in data/); "system" and "history" are LLaMA-Factory's optional Alpaca columns.
    first, second, third = rows("alpaca-en-demo.jsonl")[:3]
    row = {
        "instruction": third["instruction"],
        "input": third["input"],
        "chosen": third["output"],
        "rejected": second["output"],
        "system": "You are a helpful assistant.",
        "history": [[first["instruction"], first["output"]]],
    }
    assert detect_format(row) == "alpaca_preference" and FORMATS["alpaca_preference"] == "preference"
    ex = parse_row(row, "alpaca_preference")
    assert ex == PreferenceExample(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": first["instruction"]},
            {"role": "assistant", "content": first["output"]},
            {"role": "user", "content": third["instruction"]},
        ],
        [{"role": "assistant", "content": third["output"]}],
        [{"role": "assistant", "content": second["output"]}],
    )
    sft = {k: v for k, v in row.items() if k not in ("chosen", "rejected")} | {"output": third["output"]}
    assert parse_row(sft, detect_format(sft)) == SFTExample(ex.prompt, ex.chosen)
    assert refusal({**row, "history": [["only one"]]}).field == "history"
    assert refusal({**row, "rejected": ""}).message == '"rejected" is empty'


def test_a_declared_format_that_does_not_fit_says_what_is_wrong() -> None:
    row = rows(DPO_DEMO)[0]
    error = refusal(row, "alpaca_preference")
    assert error.field == "instruction" and error.message == '"instruction" is missing'


# ---- the trainer trains on them ----------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "name"), [("dpo", DPO_DEMO), ("sft", TOOLCALL_DEMO)])
def test_the_trainer_trains_on_the_llamafactory_demos_unchanged(
    run_inprocess: Callable[..., Result], tiny_model: Path, algorithm: str, name: str
) -> None:
    spec: dict[str, Any] = {
        "algorithm": algorithm,
        "base_model": str(tiny_model),
        "train_file": str(shared_data(name)),
        "hyperparameters": {
            "learning_rate": 1e-3,
            "batch_size": 2,
            "max_steps": 2,
            "max_length": 1024,
            "max_prompt_length": 512,
        },
    }
    if algorithm == "dpo":
        spec["hyperparameters"]["precompute_ref_logps"] = False  # two steps, not a pass over all 40 rows
    result = run_inprocess(spec)
    assert result.code == 0, result.events
    losses = [e["values"]["loss"] for e in result.events if e["type"] == "metrics" and "loss" in e["values"]]
    assert len(losses) == 2 and all(loss == loss for loss in losses)  # two steps, no NaN
