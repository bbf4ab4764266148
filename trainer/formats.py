"""Dataset formats of DESIGN §6: detect, validate and normalise one JSONL row at a time.

Pure Python (no torch): the API validates uploads line by line with these functions and the
trainer reads its data with them, so both agree on what a valid row is.

LLaMA-Factory's shapes (ShareGPT preference and SFT, Alpaca preference) are read as LLaMA-Factory reads
them with its default tags; the refusal of an unknown shape lists every accepted shape with an example.

Every row becomes one of three canonical examples. A *text* is either a plain string or a list of
chat messages (`{"role", "content"}`); conversational texts go through the model's chat template
later, in trainer.data.
"""

from __future__ import annotations

import gzip
import io
import json
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
    "sharegpt_preference": "preference",
    "alpaca_preference": "preference",
    "prompt": "prompt",
    "openai_rft": "prompt",
    "prompt_completion": "sft",
    "messages": "sft",
    "alpaca": "sft",
    "sharegpt": "sft",
    "text": "sft",
}

# format name -> (what users call it, one example line); the refusal of an unknown shape lists these
SHAPES: dict[str, tuple[str, str]] = {
    "standard": ("standard preference", '{"prompt": "2+2?", "chosen": "4", "rejected": "5"}'),
    "conversational": (
        "conversational preference",
        '{"prompt": [{"role": "user", "content": "2+2?"}], "chosen": [{"role": "assistant", "content": "4"}], '
        '"rejected": [{"role": "assistant", "content": "5"}]}',
    ),
    "implicit_prompt": (
        "implicit-prompt preference (HH-RLHF)",
        '{"chosen": "\\n\\nHuman: 2+2?\\n\\nAssistant: 4", "rejected": "\\n\\nHuman: 2+2?\\n\\nAssistant: 5"}',
    ),
    "openai_dpo": (
        "OpenAI DPO",
        '{"input": {"messages": [{"role": "user", "content": "2+2?"}]}, '
        '"preferred_output": [{"role": "assistant", "content": "4"}], '
        '"non_preferred_output": [{"role": "assistant", "content": "5"}]}',
    ),
    "sharegpt_preference": (
        "LLaMA-Factory ShareGPT preference",
        '{"conversations": [{"from": "human", "value": "2+2?"}], "chosen": {"from": "gpt", "value": "4"}, '
        '"rejected": {"from": "gpt", "value": "5"}}',
    ),
    "alpaca_preference": (
        "LLaMA-Factory Alpaca preference",
        '{"instruction": "Add.", "input": "2+2", "chosen": "4", "rejected": "5"}',
    ),
    "prompt": ("prompt-only", '{"prompt": "2+2?", "answer": "4"} (or "question" for "prompt")'),
    "openai_rft": (
        "OpenAI reinforcement (prompt-only)",
        '{"messages": [{"role": "user", "content": "2+2?"}], "answer": "4"}',
    ),
    "prompt_completion": ("SFT prompt/completion", '{"prompt": "2+2?", "completion": "4"}'),
    "messages": (
        "SFT OpenAI chat",
        '{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}',
    ),
    "alpaca": ("SFT Alpaca", '{"instruction": "Add.", "input": "2+2", "output": "4"}'),
    "sharegpt": (
        "SFT LLaMA-Factory ShareGPT",
        '{"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}',
    ),
    "text": ("SFT plain text", '{"text": "2+2=4"}'),
}

ROLES = {"system", "user", "assistant", "tool", "developer"}
# LLaMA-Factory's ShareGPT roles (and its role/content tag variant) -> chat roles. A function call is an
# assistant turn whose content is the call; an observation is the tool's answer.
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "function": "assistant",
    "observation": "tool",
    "tool": "tool",
    "system": "system",
}
TOOLS_HEADER = "You can call these tools (JSON schema):\n"
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
    """Name the format of one parsed JSON row, or raise RowError listing the accepted shapes."""
    if not isinstance(row, dict):
        raise RowError(None, f"each line must be a JSON object, got {type(row).__name__}. {accepted_shapes()}")
    keys = set(row)
    if "preferred_output" in keys or "non_preferred_output" in keys:
        return "openai_dpo"
    if "chosen" in keys or "rejected" in keys:
        if "conversations" in keys or "messages" in keys:
            return "sharegpt_preference"
        if "instruction" in keys:
            return "alpaca_preference"
        if "prompt" not in keys:
            return "implicit_prompt"
        return "conversational" if isinstance(row.get("prompt"), list) else "standard"
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        if _sharegpt_tagged(row["messages"]):
            return "sharegpt"
        return "openai_rft" if _ends_with_a_question(row["messages"]) else "messages"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "completion" in keys:
        return "prompt_completion"
    if "prompt" in keys or "question" in keys:
        return "prompt"
    if "text" in keys:
        return "text"
    shown = ", ".join(sorted(k[:40] for k in keys)[:12]) + (", ..." if len(keys) > 12 else "")
    raise RowError(None, f"unrecognised row shape (keys: {shown or 'none'}). {accepted_shapes()}")


def accepted_shapes() -> str:
    """One line naming every accepted row shape with an example (the refusal of an unknown shape)."""
    return "Accepted shapes: " + "; ".join(f"{name} ({fmt}) {example}" for fmt, (name, example) in SHAPES.items())


def _sharegpt_tagged(value: Any) -> bool:
    """Messages in LLaMA-Factory's shape: {"from", "value"} tags, or a role only it uses (e.g. "observation")."""
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return False
    only_sharegpt = SHAREGPT_ROLES.keys() - ROLES
    return "from" in value[0] or any(isinstance(r := m.get("role"), str) and r in only_sharegpt for m in value)


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
        if not isinstance(msg["role"], str) or msg["role"] not in ROLES:
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
    return _last_reply(_messages(row.get("messages"), "messages"), "messages")


def _last_reply(msgs: list[dict[str, str]], key: str) -> SFTExample:
    """Learn the trailing assistant message(s); everything before them is the prompt."""
    last = max((i for i, m in enumerate(msgs) if m["role"] != "assistant"), default=-1)
    if last == len(msgs) - 1:
        raise RowError(key, f'"{key}" must end with an assistant message to learn from')
    completion = msgs[last + 1 :]
    if not any(m["content"].strip() for m in completion):
        raise RowError(key, "the final assistant message is empty")
    return SFTExample(msgs[: last + 1], completion)


def _alpaca_prompt(row: dict[str, Any]) -> list[dict[str, str]]:
    """Alpaca's prompt as messages: optional "system", optional "history" pairs, then instruction + input."""
    instruction = _string(row, "instruction")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError("input", '"input" must be a string')
    msgs: list[dict[str, str]] = []
    system = row.get("system") or ""
    if not isinstance(system, str):
        raise RowError("system", '"system" must be a string')
    if system.strip():
        msgs.append({"role": "system", "content": system})
    history = row.get("history") or []
    if not isinstance(history, list):
        raise RowError("history", '"history" must be a list of [instruction, response] pairs')
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError("history", f'"history"[{i}] must be a pair of strings [instruction, response]')
        msgs += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    msgs.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
    return msgs


def _alpaca(row: dict[str, Any]) -> SFTExample:
    return SFTExample(_alpaca_prompt(row), [{"role": "assistant", "content": _string(row, "output")}])


def _alpaca_preference(row: dict[str, Any]) -> PreferenceExample:
    prompt = _alpaca_prompt(row)
    chosen = [{"role": "assistant", "content": _string(row, "chosen")}]
    rejected = [{"role": "assistant", "content": _string(row, "rejected")}]
    return PreferenceExample(prompt, chosen, rejected, _margin(row))


def _sharegpt_message(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, dict) or not ({"from", "value"} <= set(value) or {"role", "content"} <= set(value)):
        raise RowError(key, f'"{key}" must be an object with "from" and "value" (or "role" and "content")')
    role, content = (value["from"], value["value"]) if "from" in value else (value["role"], value["content"])
    if not isinstance(role, str) or role not in SHAREGPT_ROLES:
        raise RowError(key, f'"{key}" has unknown role {role!r}; one of: {", ".join(SHAREGPT_ROLES)}')
    if not isinstance(content, str):
        raise RowError(key, f'"{key}" value must be a string')
    return {"role": SHAREGPT_ROLES[role], "content": content}


def _sharegpt_conversation(row: dict[str, Any]) -> tuple[str, list[dict[str, str]]]:
    """(its key, the conversation as chat messages), with "system" and "tools" in one leading system message.

    As in LLaMA-Factory, a system turn first in the conversation wins over a top-level "system"; tool
    definitions ("tools", a JSON string or list) are appended to the system message, as its templates do.
    """
    key = "conversations" if "conversations" in row else "messages"
    value = row[key]
    if not isinstance(value, list) or not value:
        raise RowError(key, f'"{key}" must be a non-empty list of messages')
    msgs = [_sharegpt_message(m, f"{key}[{i}]") for i, m in enumerate(value)]
    if any(m["role"] == "system" for m in msgs[1:]):
        raise RowError(key, f'"{key}" may have a system message only as its first message')
    system = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else row.get("system") or ""
    if not isinstance(system, str):
        raise RowError("system", '"system" must be a string')
    tools = row.get("tools") or ""
    if not isinstance(tools, str):
        tools = json.dumps(tools, ensure_ascii=False)
    if tools.strip() not in ("", "[]", "{}"):
        system = (f"{system}\n\n" if system.strip() else "") + TOOLS_HEADER + tools
    if not msgs:
        raise RowError(key, f'"{key}" has only a system message')
    if not any(m["content"].strip() for m in msgs):
        raise RowError(key, f'"{key}" is empty')
    return key, ([{"role": "system", "content": system}] if system.strip() else []) + msgs


def _sharegpt(row: dict[str, Any]) -> SFTExample:
    key, msgs = _sharegpt_conversation(row)
    return _last_reply(msgs, key)


def _sharegpt_reply(row: dict[str, Any], key: str) -> list[dict[str, str]]:
    if key not in row:
        raise RowError(key, f'"{key}" is missing')
    if not isinstance(row[key], dict):
        raise RowError(key, f'"{key}" must be one message, e.g. {{"from": "gpt", "value": "..."}}')
    msg = _sharegpt_message(row[key], key)
    if msg["role"] != "assistant":
        raise RowError(key, f'"{key}" must be a reply from "gpt" (or "function_call")')
    if not msg["content"].strip():
        raise RowError(key, f'"{key}" is empty')
    return [msg]


def _sharegpt_preference(row: dict[str, Any]) -> PreferenceExample:
    key, prompt = _sharegpt_conversation(row)
    if prompt[-1]["role"] == "assistant":
        raise RowError(key, f'"{key}" must end with a human (or observation) turn that "chosen" and "rejected" answer')
    return PreferenceExample(prompt, _sharegpt_reply(row, "chosen"), _sharegpt_reply(row, "rejected"), _margin(row))


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
    "sharegpt": _sharegpt,
    "sharegpt_preference": _sharegpt_preference,
    "alpaca_preference": _alpaca_preference,
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
