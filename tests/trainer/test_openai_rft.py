"""OpenAI's reinforcement fine-tuning data and string_check grader, through the real trainer.

What alignd makes of an OpenAI reinforcement job (api/openai_compat): rows `{"messages": [... user],
"answer": ...}` (format openai_rft, a prompt dataset) and a `string_check` rule reading the `answer`
column. A tiny model trains a step of GRPO on them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.shared_data import shared_data
from tests.tiny import build_tiny_model
from tests.trainer.online import of_type, run_trainer
from trainer.formats import PromptExample, detect_format, iter_rows, parse_row


def rft_file(path: Path, rows: int) -> Path:
    with open(path, "w") as out:
        for _, (_, row) in zip(range(rows), iter_rows(str(shared_data("gsm8k-train.jsonl"))), strict=False):
            final = row["answer"].rsplit("####", 1)[1].strip()
            messages = [
                {"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": row["question"]},
            ]
            out.write(json.dumps({"messages": messages, "answer": final}) + "\n")
    return path


def test_openai_reinforcement_rows_are_chat_prompts_with_their_other_keys_as_columns(tmp_path: Path) -> None:
    row = json.loads(rft_file(tmp_path / "rft.jsonl", 1).read_text())
    assert detect_format(row) == "openai_rft"
    example = parse_row(row, "openai_rft")
    assert isinstance(example, PromptExample)
    assert isinstance(example.prompt, list) and example.prompt[-1]["role"] == "user"
    assert example.columns == {"answer": "72"}
    # A chat that ends with the assistant's answer stays SFT data.
    sft = {"messages": [*row["messages"], {"role": "assistant", "content": "72"}]}
    assert detect_format(sft) == "messages"


def test_grpo_trains_on_openai_reinforcement_rows_with_a_string_check_reward(tmp_path: Path) -> None:
    tiny = build_tiny_model(tmp_path / "tiny")
    spec = {
        "algorithm": "grpo",
        "base_model": str(tiny),
        "train_file": str(rft_file(tmp_path / "rft.jsonl", 4)),
        "reward": [
            {"type": "rule", "rule": "string_check", "operation": "like", "column": "answer", "name": "correct"},
            {"type": "rule", "rule": "string_check", "operation": "ne", "reference": "", "name": "nonempty"},
        ],
        "hyperparameters": {
            "batch_size": 2,
            "num_generations": 2,
            "max_new_tokens": 6,
            "max_steps": 1,
            "max_prompt_length": 96,
            "max_length": 128,
        },
    }
    code, events, _ = run_trainer(tmp_path, spec)
    assert code == 0, events[-3:]
    (metrics,) = of_type(events, "metrics")
    assert {"rewards/correct", "rewards/nonempty"} <= set(metrics["values"])
    samples = of_type(events, "sample")
    assert samples and set(samples[0]["rewards"]) == {"correct", "nonempty"}
