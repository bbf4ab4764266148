"""Dataset formats of DESIGN §6: detect, validate and normalise one JSONL row at a time.

Pure Python (no torch): the API validates uploads line by line with these functions and the
trainer reads its data with them, so both agree on what a valid row is.

Every row becomes one of three canonical examples. A *text* is either a plain string or a list of
chat messages (`{"role", "content"}`); conversational texts go through the model's chat template
later, in trainer.data.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

Text = str | list[dict[str, str]]

# format name -> dataset kind
FORMATS: dict[str, str] = {
    "standard": "preference",
    "conversational": "preference",
    "implicit_prompt": "preference",
    "openai_dpo": "preference",
    "prompt": "prompt",
    "openai_rft": "prompt",
    "prompt_completion": "sft",
    "messages": "sft",
    "alpaca": "sft",
    "text": "sft",
}

ROLES = {"system", "user", "assistant", "tool", "developer"}
HH_ASSISTANT = "\n\nAssistant:"


class RowError(ValueError):
    """A row that does not fit its format; `field` names the offending key."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass
class PreferenceExample:
    prompt: Text
    chosen: Text
    rejected: Text
    margin: float | None = None


@dataclass
class PromptExample:
    prompt: Text
    columns: dict[str, Any] = field(default_factory=dict)
    """Every other column of the row (e.g. "answer"), passed to reward rules."""


@dataclass
class SFTExample:
    prompt: Text
    completion: Text


Example = PreferenceExample | PromptExample | SFTExample


def detect_format(row: Any) -> str:
    """Name the format of one parsed JSON row, or raise RowError."""
    if not isinstance(row, dict):
        raise RowError(None, f"each line must be a JSON object, got {type(row).__name__}")
    keys = set(row)
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "openai_dpo"
    if "chosen" in keys or "rejected" in keys:
        if "prompt" not in keys:
            return "implicit_prompt"
        return "conversational" if isinstance(row.get("prompt"), list) else "standard"
    if "messages" in keys:
        return "openai_rft" if _ends_with_a_question(row["messages"]) else "messages"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "completion" in keys:
        return "prompt_completion"
    if "prompt" in keys or "question" in keys:
        return "prompt"
    if "text" in keys:
        return "text"
    raise RowError(
        None,
        "cannot tell the format: expected prompt/chosen/rejected (preference), "
        "input/preferred_output/non_preferred_output (OpenAI DPO), prompt (prompt-only), "
        "prompt/completion, messages, instruction/output or text (SFT)",
    )


def parse_row(row: Any, fmt: str) -> Example:
    """Validate a row of a known format and return its canonical example (raises RowError)."""
    if not isinstance(row, dict):
        raise RowError(None, f"each line must be a JSON object, got {type(row).__name__}")
    return _PARSERS[fmt](row)


def _text(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> Text:
    if key not in row:
        raise RowError(key, f'"{key}" is missing')
    value = row[key]
    if isinstance(value, str):
        if not allow_empty and not value.strip():
            raise RowError(key, f'"{key}" is empty')
        return value
    if isinstance(value, list):
        return _messages(value, key, allow_empty=allow_empty)
    raise RowError(key, f'"{key}" must be a string or a list of messages')


def _string(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = _text(row, key, allow_empty=allow_empty)
    if not isinstance(value, str):
        raise RowError(key, f'"{key}" must be a string')
    return value


def _messages(value: Any, key: str, *, allow_empty: bool = False) -> list[dict[str, str]]:
    if not isinstance(value, list) or (not value and not allow_empty):
        raise RowError(key, f'"{key}" must be a non-empty list of messages')
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RowError(key, f'"{key}"[{i}] must be an object with "role" and "content"')
        if msg["role"] not in ROLES:
            raise RowError(key, f'"{key}"[{i}] has unknown role {msg["role"]!r}')
        if not isinstance(msg["content"], str):
            raise RowError(key, f'"{key}"[{i}].content must be a string')
        out.append({"role": msg["role"], "content": msg["content"]})
    if out and not allow_empty and not any(m["content"].strip() for m in out):
        raise RowError(key, f'"{key}" is empty')
    return out


def _margin(row: dict[str, Any]) -> float | None:
    value = row.get("margin")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError("margin", '"margin" must be a number')
    return float(value)


def _standard(row: dict[str, Any]) -> PreferenceExample:
    prompt = _string(row, "prompt")
    return PreferenceExample(prompt, _string(row, "chosen"), _string(row, "rejected"), _margin(row))


def _conversational(row: dict[str, Any]) -> PreferenceExample:
    prompt = _messages(row.get("prompt"), "prompt")
    chosen = _messages(row.get("chosen"), "chosen")
    rejected = _messages(row.get("rejected"), "rejected")
    return PreferenceExample(prompt, chosen, rejected, _margin(row))


def _implicit_prompt(row: dict[str, Any]) -> PreferenceExample:
    chosen = _text(row, "chosen")
    rejected = _text(row, "rejected")
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise RowError("rejected", '"chosen" and "rejected" must both be strings or both messages')
    prompt: Text
    if isinstance(chosen, str) and isinstance(rejected, str):
        prompt, chosen, rejected = split_shared_prefix(chosen, rejected)
    else:
        assert isinstance(chosen, list) and isinstance(rejected, list)
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        if n == 0:
            raise RowError("chosen", '"chosen" and "rejected" share no leading messages (no prompt)')
        prompt, chosen, rejected = list(chosen[:n]), list(chosen[n:]), list(rejected[n:])
    if not (chosen if isinstance(chosen, list) else chosen.strip()):
        raise RowError("chosen", '"chosen" has no completion after the shared prompt')
    if not (rejected if isinstance(rejected, list) else rejected.strip()):
        raise RowError("rejected", '"rejected" has no completion after the shared prompt')
    return PreferenceExample(prompt, chosen, rejected, _margin(row))


def split_shared_prefix(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two transcripts into (prompt, chosen completion, rejected completion).

    The prompt is the longest common prefix, cut back to just after its last
    "\\n\\nAssistant:" marker when there is one (HH-RLHF), else to the last whitespace.
    """
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    common = chosen[:n]
    cut = common.rfind(HH_ASSISTANT)
    if cut >= 0:
        n = cut + len(HH_ASSISTANT)
    else:
        n = max(common.rfind(" "), common.rfind("\n")) + 1
    if n == 0:
        raise RowError("chosen", '"chosen" and "rejected" share no prompt prefix')
    return chosen[:n], chosen[n:], rejected[n:]


def _openai_dpo(row: dict[str, Any]) -> PreferenceExample:
    inp = row.get("input")
    if not isinstance(inp, dict) or "messages" not in inp:
        raise RowError("input", '"input" must be an object with "messages"')
    prompt = _messages(inp["messages"], "input.messages")
    chosen = _messages(row.get("preferred_output"), "preferred_output")
    rejected = _messages(row.get("non_preferred_output"), "non_preferred_output")
    return PreferenceExample(prompt, chosen, rejected, _margin(row))


def _prompt(row: dict[str, Any]) -> PromptExample:
    key = "prompt" if "prompt" in row else "question"
    prompt = _text(row, key)
    return PromptExample(prompt, {k: v for k, v in row.items() if k != key})


def _ends_with_a_question(messages: Any) -> bool:
    """OpenAI's reinforcement rows are chats that end before the answer (`{"messages": [..., user], ...}`)."""
    return (
        bool(messages)
        and isinstance(messages, list)
        and isinstance(messages[-1], dict)
        and (messages[-1].get("role") not in ("assistant", None))
    )


def _openai_rft(row: dict[str, Any]) -> PromptExample:
    """OpenAI reinforcement fine-tuning: the chat so far is the prompt; other keys are columns for the graders."""
    return PromptExample(_messages(row.get("messages"), "messages"), {k: v for k, v in row.items() if k != "messages"})


def _prompt_completion(row: dict[str, Any]) -> SFTExample:
    prompt = _text(row, "prompt", allow_empty=True)
    completion = _text(row, "completion")
    if isinstance(prompt, list) != isinstance(completion, list):
        raise RowError("completion", '"prompt" and "completion" must both be strings or messages')
    return SFTExample(prompt, completion)


def _messages_row(row: dict[str, Any]) -> SFTExample:
    msgs = _messages(row.get("messages"), "messages")
    last = max((i for i, m in enumerate(msgs) if m["role"] != "assistant"), default=-1)
    if last == len(msgs) - 1:
        raise RowError("messages", '"messages" must end with an assistant message to learn from')
    completion = msgs[last + 1 :]
    if not any(m["content"].strip() for m in completion):
        raise RowError("messages", "the final assistant message is empty")
    return SFTExample(msgs[: last + 1], completion)


def _alpaca(row: dict[str, Any]) -> SFTExample:
    instruction = _string(row, "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError("input", '"input" must be a string')
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    output = _string(row, "output")
    return SFTExample([{"role": "user", "content": user}], [{"role": "assistant", "content": output}])


def _text_row(row: dict[str, Any]) -> SFTExample:
    return SFTExample("", _string(row, "text"))


_PARSERS: dict[str, Callable[[dict[str, Any]], Example]] = {
    "standard": _standard,
    "conversational": _conversational,
    "implicit_prompt": _implicit_prompt,
    "openai_dpo": _openai_dpo,
    "prompt": _prompt,
    "openai_rft": _openai_rft,
    "prompt_completion": _prompt_completion,
    "messages": _messages_row,
    "alpaca": _alpaca,
    "text": _text_row,
}


@dataclass
class LineError:
    line: int
    field: str | None
    message: str


def open_jsonl(path: str) -> io.BufferedReader | gzip.GzipFile:
    """Open a .jsonl or .jsonl.gz file for binary line reading (gzip is sniffed, not guessed)."""
    fh = open(path, "rb")  # noqa: SIM115 (returned to the caller, who closes it)
    if fh.peek(2)[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=fh)
    return fh


def iter_rows(path: str) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed JSON) for each non-blank line; raises RowError on bad JSON."""
    with open_jsonl(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                yield lineno, orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise RowError(None, f"line {lineno}: not valid JSON ({exc})") from exc


def read_examples(path: str, kind: str | None = None) -> tuple[str, list[Example]]:
    """Read a whole JSONL file into canonical examples; returns (format, examples).

    The first row decides the format; every row must share it. Raises RowError whose message
    names the line. When `kind` is given, the file's kind must match it.
    """
    fmt: str | None = None
    examples: list[Example] = []
    for lineno, row in iter_rows(path):
        try:
            if fmt is None:
                fmt = detect_format(row)
                if kind is not None and FORMATS[fmt] != kind:
                    raise RowError(
                        None,
                        f"this is a {FORMATS[fmt]} dataset ({fmt} format) but the algorithm needs a {kind} dataset",
                    )
            examples.append(parse_row(row, fmt))
        except RowError as exc:
            raise RowError(exc.field, f"dataset row {lineno}: {exc.message}") from exc
    if fmt is None:
        raise RowError(None, "the dataset is empty")
    return fmt, examples
