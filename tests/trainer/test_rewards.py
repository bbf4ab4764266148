"""Reward components on real GSM8K rows, a tiny reward model, and the failure modes."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.shared_data import shared_data
from tests.tiny import build_tiny_model
from trainer.config import ModelComponent, RuleComponent
from trainer.formats import PromptExample, detect_format, iter_rows, parse_row
from trainer.rewards import (
    RewardError,
    build_reward,
    extract_answer,
    normalize_answer,
    reference_answer,
)

GSM8K = shared_data("gsm8k-train.jsonl")


@pytest.fixture(scope="module")
def gsm8k() -> list[PromptExample]:
    rows = [row for _, row in itertools.islice(iter_rows(str(GSM8K)), 8)]
    examples = [parse_row(row, detect_format(row)) for row in rows]
    assert all(isinstance(e, PromptExample) for e in examples)
    return examples  # type: ignore[return-value]


def rule(**kwargs: Any) -> RuleComponent:
    return RuleComponent(**kwargs)


def test_gsm8k_rows_are_prompts_with_the_answer_passed_through_as_a_column(gsm8k: list[PromptExample]) -> None:
    first = gsm8k[0]
    assert isinstance(first.prompt, str) and first.prompt.startswith("Natalia sold clips")
    assert reference_answer(first.columns["answer"]) == "72"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("The total is $1,080.", "$1,080"),
        ("So the answer is \\boxed{18}.", "18"),
        ("First 3 then 5 so 8.0", "8.0"),
        ("no numbers here", "no numbers here"),
    ],
)
def test_final_answer_is_taken_after_hashes_else_boxed_else_last_number(completion: str, expected: str) -> None:
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    ("a", "b"),
    [("1,080", "1080"), ("$5", "5"), ("3.0", "3"), ("72.", "72"), ("0.50", "0.5"), ("Paris", " paris ")],
)
def test_normalisation_makes_equivalent_answers_equal(a: str, b: str) -> None:
    assert normalize_answer(a) == normalize_answer(b)


def test_exact_match_scores_gsm8k_reference_solutions_as_correct_and_wrong_numbers_as_wrong(
    gsm8k: list[PromptExample],
) -> None:
    reward = build_reward([rule(rule="exact_match")])
    prompts = [e.prompt for e in gsm8k]
    columns = [e.columns for e in gsm8k]
    # The reference solutions themselves end in "#### N": all correct.
    right, parts = reward(prompts, [c["answer"] for c in columns], columns)
    assert right.tolist() == [1.0] * len(gsm8k)
    assert parts["exact_match"].tolist() == right.tolist()
    # The same solutions with the final answer off by one: all wrong.
    wrong_completions = [f"I think it is {int(reference_answer(c['answer'])) + 1}." for c in columns]
    wrong, _ = reward(prompts, wrong_completions, columns)
    assert wrong.tolist() == [0.0] * len(gsm8k)
    # A free-form answer with a dollar sign and a trailing .0 still counts (row 2: Weng earned $10).
    assert reward([prompts[1]], ["She earned $10.0 in total."], [columns[1]])[0].item() == 1.0


def test_contains_regex_and_format_rules(gsm8k: list[PromptExample]) -> None:
    columns = [gsm8k[0].columns] * 3
    completions = ["#### 72", "The answer is 72 clips", "I do not know"]
    reward = build_reward(
        [
            rule(rule="contains"),
            rule(rule="regex", pattern=r"####\s*\d+"),
            rule(rule="format", pattern=r"#### \d+", name="strict_format"),
        ]
    )
    total, parts = reward(["q"] * 3, completions, columns)
    assert parts["contains"].tolist() == [1.0, 1.0, 0.0]
    assert parts["regex"].tolist() == [1.0, 0.0, 0.0]
    assert parts["strict_format"].tolist() == [1.0, 0.0, 0.0]
    assert total.tolist() == [3.0, 1.0, 0.0]


def test_length_rule_in_target_and_max_modes() -> None:
    completions = ["x" * 5, "x" * 10, "x" * 20]
    target = build_reward([rule(rule="length", target_length=10)])
    at_most = build_reward([rule(rule="length", target_length=10, length_mode="max")])
    assert target(["p"] * 3, completions, [{}] * 3)[0].tolist() == [-0.5, 0.0, -1.0]
    assert at_most(["p"] * 3, completions, [{}] * 3)[0].tolist() == [0.0, 0.0, -1.0]


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("eq", [1.0, 0.0, 0.0, 0.0]),
        ("ne", [0.0, 1.0, 1.0, 1.0]),
        ("like", [1.0, 1.0, 0.0, 1.0]),
        ("ilike", [1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_string_check_compares_raw_strings_with_the_column_as_openais_grader_does(
    operation: str, expected: list[float]
) -> None:
    # No answer extraction or numeric normalisation: "72.0" is not "72" for a string check.
    completions = ["Paris", "It is Paris.", "PARIS", "72.0"]
    columns = [{"answer": "Paris"}] * 3 + [{"answer": 72}]
    reward = build_reward([rule(rule="string_check", operation=operation, name="city")])
    total, parts = reward(["q"] * 4, completions, columns)
    assert parts["city"].tolist() == expected == total.tolist()


def test_string_check_with_a_fixed_reference_reads_no_column() -> None:
    reward = build_reward([rule(rule="string_check", operation="like", reference="</answer>")])
    assert reward(["q", "q"], ["<answer>4</answer>", "4"], [{}, {}])[0].tolist() == [1.0, 0.0]


def test_string_check_needs_an_operation_and_other_rules_refuse_one() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs an operation"):
        rule(rule="string_check")
    with pytest.raises(ValidationError, match="string_check' only"):
        rule(rule="contains", operation="eq")


def test_fuzzy_match_scores_the_similarity_to_the_column_or_a_reference_from_0_to_1() -> None:
    import difflib

    completions = ["The capital is Paris.", "Paris", "Berlin", ""]
    reward = build_reward([rule(rule="fuzzy_match", name="sim")])
    scores = reward(["q"] * 4, completions, [{"answer": "Paris"}] * 4)[1]["sim"].tolist()
    assert scores[1] == 1.0 and scores[3] == 0.0  # identical, and nothing in common
    assert scores[0] == pytest.approx(2 * 5 / (len(completions[0]) + 5))  # "Paris" matched whole: 2·M / total
    assert 0.0 < scores[2] < scores[0]  # "Berlin" shares only a letter or two
    assert scores[2] == pytest.approx(difflib.SequenceMatcher(None, "Berlin", "Paris").ratio())
    fixed = build_reward([rule(rule="fuzzy_match", reference="yes")])
    assert fixed(["q"], ["yes"], [{}])[0].tolist() == [1.0]
    with pytest.raises(Exception, match="string_check' only"):
        rule(rule="fuzzy_match", operation="eq")


def test_weighted_sum_and_duplicate_rule_names_get_suffixes() -> None:
    reward = build_reward([rule(rule="regex", pattern="a", weight=2.0), rule(rule="regex", pattern="b", weight=-0.5)])
    total, parts = reward(["p", "p"], ["ab", "a"], [{}, {}])
    assert set(parts) == {"regex", "regex_2"}
    assert total.tolist() == [1.5, 2.0]


def test_rule_reading_a_missing_column_raises_a_reward_error_naming_the_column() -> None:
    reward = build_reward([rule(rule="exact_match", column="solution")])
    with pytest.raises(RewardError, match=r"column 'solution'.*columns: answer"):
        reward(["p"], ["42"], [{"answer": "#### 42"}])


def test_component_that_raises_or_returns_nan_is_a_reward_error_not_a_zero() -> None:
    reward = build_reward([rule(rule="regex", pattern="a")])
    reward.components.append(("broken", 1.0, lambda p, c, k: [1 / 0 for _ in c]))
    with pytest.raises(RewardError, match="'broken' failed: ZeroDivisionError"):
        reward(["p"], ["a"], [{}])
    reward.components[-1] = ("nan", 1.0, lambda p, c, k: [math.nan for _ in c])
    with pytest.raises(RewardError, match=r"'nan' returned nan for completion 0"):
        reward(["p"], ["a"], [{}])


def test_missing_reward_model_folder_is_a_reward_error(tmp_path: Path) -> None:
    with pytest.raises(RewardError, match="could not be loaded"):
        build_reward([ModelComponent(model=str(tmp_path / "nope"))])


def test_model_component_scores_in_batches_consistently_with_one_by_one(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "rm", kind="seqcls")
    reward = build_reward([ModelComponent(model=str(path), weight=2.0)])
    scorer = reward.components[0][2]
    scorer.batch_size = 3  # type: ignore[attr-defined]  # force several padded batches
    prompts = ["What is 2+3?", [{"role": "user", "content": "Hi"}], "Say a long sentence please"]
    completions = ["5", "Hello there, how can I help you today?", "ok"]
    prompts, completions = prompts * 2, completions * 2
    total, parts = reward(prompts, completions, [{}] * 6)
    alone = torch.tensor([reward([p], [c], [{}])[1]["model"].item() for p, c in zip(prompts, completions, strict=True)])
    torch.testing.assert_close(parts["model"], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(total, 2.0 * parts["model"])
    assert parts["model"][0] != parts["model"][1]  # different texts, different scores
    # The conversation goes through the reward model's own chat template.
    assert scorer.text("Hi", "yo").startswith("<|im_start|>user\nHi<|im_end|>")  # type: ignore[attr-defined]
