"""Tokenise canonical examples (trainer.formats) for training and truncate them (trainer.packing batches them).

Rendering:
- Conversational texts (lists of messages) go through the tokenizer's chat template: the prompt is
  rendered with the generation prompt, the completion is what the template adds after it for the whole
  conversation. A model without a chat template gets a plain "role: content" rendering instead.
- Plain strings are tokenised as they are: the prompt with the tokenizer's special tokens (BOS/CLS),
  the completion without, followed by EOS.

Truncation policy (the same for every algorithm, the online algorithms' prompts included):
- The prompt is cut from the LEFT to `max_prompt_length` tokens (the end of the prompt, next to the
  answer, survives; a leading BOS/CLS is kept).
- Each completion is then cut from the RIGHT so prompt + completion fits in `max_length`.
- A preference pair whose chosen and rejected completions become identical is dropped (it carries no
  signal). If every row's completion had to be cut (no row fits max_length even with its prompt cut
  to max_prompt_length), or every row was dropped, the run stops with a `DataError` saying which limit
  to raise: a model trained only on cut-off answers never sees one end. (An eval file is only
  measured, so there it is reported, not refused.)

Labels use -100 for every token that must not count in a loss (prompt and padding).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedTokenizerBase

from trainer.formats import PreferenceExample, SFTExample, Text

if TYPE_CHECKING:
    from trainer.run import Run

IGNORE = -100


class DataError(ValueError):
    """The dataset cannot be trained on as configured; the message says what to change."""


@dataclass
class TruncationReport:
    rows: int = 0
    truncated: int = 0
    """Rows whose prompt or completion was cut."""
    completion_truncated: int = 0
    """Rows whose completion was cut (did not fit max_length even after the prompt cut)."""
    dropped: int = 0
    longest: int = 0
    shortest: int = 0

    def message(self, name: str) -> str:
        return (
            f"{name}: {self.rows} rows, {self.truncated} truncated ({self.completion_truncated} with the completion "
            f"cut), {self.dropped} dropped "
            f"(token lengths {self.shortest}..{self.longest})"
        )


@dataclass
class PreferenceFeatures:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    margin: float | None = None


@dataclass
class SFTFeatures:
    input_ids: list[int]
    labels: list[int]


@dataclass
class Encoded:
    """Tokenised dataset plus how truncation went."""

    features: list = field(default_factory=list)
    report: TruncationReport = field(default_factory=TruncationReport)


# --- rendering ---------------------------------------------------------------------------------


def _plain_messages(messages: list[dict[str, str]]) -> str:
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages)


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text) -> tuple[str, bool]:
    """(text, templated?) of a prompt to be completed (online algorithms): chat prompts through the chat
    template with the generation prompt (plain "role: content" lines without one), strings as they are."""
    if isinstance(prompt, list):
        if getattr(tokenizer, "chat_template", None):
            return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)), True
        return _plain_messages(prompt) + "assistant: ", False
    return prompt, False


def render(tokenizer: PreTrainedTokenizerBase, prompt: Text, completion: Text) -> tuple[str, str, bool]:
    """(prompt text, completion text, templated?) for one prompt/completion pair."""
    if isinstance(completion, list):
        prompt_msgs = prompt if isinstance(prompt, list) else ([{"role": "user", "content": prompt}] if prompt else [])
        if getattr(tokenizer, "chat_template", None):
            full = str(tokenizer.apply_chat_template(prompt_msgs + completion, tokenize=False))
            for generation_prompt in (True, False):
                prompt_text = (
                    str(
                        tokenizer.apply_chat_template(
                            prompt_msgs, tokenize=False, add_generation_prompt=generation_prompt
                        )
                    )
                    if prompt_msgs
                    else ""
                )
                if full.startswith(prompt_text):
                    return prompt_text, full[len(prompt_text) :], True
            raise DataError("the chat template does not render the prompt as a prefix of the conversation")
        return _plain_messages(prompt_msgs) + "assistant: ", " ".join(m["content"] for m in completion), False
    if isinstance(prompt, list):
        return _plain_messages(prompt) + "assistant: ", completion, False
    return prompt, completion, False


def tokenize_completion(tokenizer: PreTrainedTokenizerBase, completion: str) -> list[int]:
    """Completion token ids ending with EOS (or SEP for encoders without EOS)."""
    ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    if end is not None and end not in ids:
        ids.append(end)
    return ids


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, templated: bool) -> list[int]:
    """Prompt token ids; special tokens (BOS/CLS) are added unless the chat template wrote them."""
    if not prompt:
        ids = list(tokenizer("", add_special_tokens=not templated)["input_ids"])
        # Encoders add [CLS] [SEP]; keep only the leading special token so the completion follows it.
        return ids[:1]
    return list(tokenizer(prompt, add_special_tokens=not templated)["input_ids"])


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Text, max_prompt_length: int) -> list[int]:
    """Token ids of a prompt to be completed, cut from the left like every other prompt (a leading BOS/CLS is kept)."""
    text, templated = render_prompt(tokenizer, prompt)
    return _cut_prompt(tokenize_prompt(tokenizer, text, templated), max_prompt_length, set(tokenizer.all_special_ids))


def _cut_prompt(ids: list[int], limit: int, special: set[int]) -> list[int]:
    if len(ids) <= limit:
        return ids
    if ids and ids[0] in special and limit > 1:
        return ids[:1] + ids[len(ids) - (limit - 1) :]
    return ids[len(ids) - limit :]


# --- encoding datasets -------------------------------------------------------------------------


def encode_preferences(
    examples: Sequence[PreferenceExample],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
    name: str = "train",
) -> Encoded:
    """Tokenise (prompt, chosen, rejected) rows with the truncation policy of this module."""
    out = Encoded()
    special = set(tokenizer.all_special_ids)
    lengths = []
    for i, ex in enumerate(examples):
        prompt_text, chosen_text, templated = render(tokenizer, ex.prompt, ex.chosen)
        _, rejected_text, _ = render(tokenizer, ex.prompt, ex.rejected)
        prompt = tokenize_prompt(tokenizer, prompt_text, templated)
        chosen = tokenize_completion(tokenizer, chosen_text)
        rejected = tokenize_completion(tokenizer, rejected_text)
        if not chosen_text.strip() or not rejected_text.strip():
            raise DataError(f"{name} row {i + 1}: a completion is empty after rendering; remove the row")
        longest = max(len(chosen), len(rejected))
        lengths.append(len(prompt) + longest)
        prompt, room = _truncate(out.report, prompt, longest, max_length, max_prompt_length, special)
        chosen, rejected = chosen[:room], rejected[:room]
        if chosen == rejected:
            out.report.dropped += 1
            continue
        out.features.append(PreferenceFeatures(prompt, chosen, rejected, ex.margin))
    _finish(out, lengths, max_length, max_prompt_length, name)
    return out


def encode_sft(
    examples: Sequence[SFTExample],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_prompt_length: int,
    completion_only: bool = True,
    name: str = "train",
) -> Encoded:
    """Tokenise (prompt, completion) rows; labels mask the prompt when `completion_only`."""
    out = Encoded()
    special = set(tokenizer.all_special_ids)
    lengths = []
    for i, ex in enumerate(examples):
        prompt_text, completion_text, templated = render(tokenizer, ex.prompt, ex.completion)
        if not completion_text.strip():
            raise DataError(f"{name} row {i + 1}: the completion is empty; remove the row or fill it in")
        prompt = tokenize_prompt(tokenizer, prompt_text, templated)
        completion = tokenize_completion(tokenizer, completion_text)
        full = len(prompt) + len(completion)
        lengths.append(full)
        cut, room = _truncate(out.report, prompt, len(completion), max_length, max_prompt_length, special)
        completion = completion[:room]
        prompt_labels = [IGNORE] * len(cut) if completion_only else list(cut)
        out.features.append(SFTFeatures(cut + completion, prompt_labels + completion))
    _finish(out, lengths, max_length, max_prompt_length, name)
    return out


def _truncate(
    report: TruncationReport,
    prompt: list[int],
    completion: int,
    max_length: int,
    max_prompt_length: int,
    special: set[int],
) -> tuple[list[int], int]:
    """The truncation policy for one row: the prompt cut from the left, and the room left for its (longest)
    completion of `completion` tokens, to be cut from the right; counted in `report`."""
    cut = _cut_prompt(prompt, max_prompt_length, special)
    room = max_length - len(cut)
    report.truncated += len(cut) < len(prompt) or completion > room
    report.completion_truncated += completion > room
    return cut, room


def _finish(out: Encoded, lengths: list[int], max_length: int, max_prompt_length: int, name: str) -> None:
    report = out.report
    report.rows = len(lengths)
    report.longest = max(lengths, default=0)
    report.shortest = min(lengths, default=0)
    if name == "train" and report.rows and report.completion_truncated == report.rows:
        raise DataError(
            f"every {name} row is longer than max_length={max_length} even with its prompt cut to "
            f"max_prompt_length={max_prompt_length} (the shortest row has {report.shortest} tokens), so no "
            "completion would keep its end: raise max_length or shorten the data"
        )
    if not out.features:
        raise DataError(
            f"no {name} rows left after truncation ({report.dropped} dropped because chosen and rejected became "
            f"identical within max_length={max_length}): raise max_length"
        )


def encode_preference_files(
    run: Run, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[PreferenceFeatures], list[PreferenceFeatures]]:
    """(train, eval) features of a preference spec (dpo, reward); eval is empty without an eval file."""
    train = _encode_preference_file(run, tokenizer, run.spec.train_file, "train")
    evaluation = _encode_preference_file(run, tokenizer, run.spec.eval_file, "eval") if run.spec.eval_file else []
    return train, evaluation


def _encode_preference_file(
    run: Run, tokenizer: PreTrainedTokenizerBase, path: str, name: str
) -> list[PreferenceFeatures]:
    """Read and tokenise one preference file, logging and recording its truncation report."""
    config = run.config
    encoded = encode_preferences(
        read_dataset(path, "preference", name), tokenizer, config.max_length, config.max_prompt_length, name
    )
    record_report(run, encoded.report, name)
    return encoded.features


def record_report(run: Run, report: TruncationReport, name: str) -> None:
    """Log how tokenisation and truncation of the `name` split went, and keep it for alignd.json."""
    run.events.log(report.message(name))
    run.data_report[name] = vars(report)


def pack_sft(features: Sequence[SFTFeatures], max_length: int) -> list[SFTFeatures]:
    """Concatenate rows (each ends with EOS) and cut the stream into max_length chunks.

    Attention crosses row boundaries inside a chunk, as in the classic constant-length packing;
    the loss still skips prompt tokens. The last partial chunk is kept.
    """
    ids: list[int] = []
    labels: list[int] = []
    for f in features:
        ids.extend(f.input_ids)
        labels.extend(f.labels)
    return [
        SFTFeatures(ids[i : i + max_length], labels[i : i + max_length])
        for i in range(0, len(ids), max_length)
        if any(label != IGNORE for label in labels[i : i + max_length])
    ]


# --- padding -----------------------------------------------------------------------------------


def pad(sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
    """Right-pad lists of ints into a (B, T) long tensor."""
    width = max(len(s) for s in sequences)
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def read_dataset(path: str, kind: str, name: str = "train") -> list:
    """Canonical examples of a JSONL file of the given kind (DataError names the row and the problem)."""
    from trainer.formats import RowError, read_examples

    try:
        _, examples = read_examples(path, kind)
    except FileNotFoundError as exc:
        raise DataError(f"{name} file {path!r} not found") from exc
    except RowError as exc:
        raise DataError(f"{name} file: {exc.message}") from exc
    return examples
