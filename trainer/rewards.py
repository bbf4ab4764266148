"""Reward functions for the online algorithms: a weighted sum of model and rule components.

`build_reward(components)` turns the reward spec of a job (trainer.config.ModelComponent /
RuleComponent) into one callable

    reward(prompts, completions, columns) -> (total (N,), {name: (N,)})

used by GRPO, PPO and the API's score endpoint. Row i is (prompts[i], completions[i], columns[i]);
`columns` holds the dataset's extra columns of that row (e.g. GSM8K's "answer").

Components score *text*, never token ids: a reward model re-tokenises prompt + completion with its
own tokenizer (and its own chat template when it has one), so its vocabulary need not match the
policy's. Any component that raises or returns NaN/inf stops the run with a RewardError that names
the component; a broken reward never silently becomes 0.

Rules (all return floats, 1.0 = pass, 0.0 = fail unless said otherwise):
- exact_match: the completion's final answer equals the column's, after numeric normalisation
  (GSM8K "#### 72", "1,000", "$5", "3.0", a trailing period). The final answer is the text after the
  last "####", else the last \\boxed{...}, else the last number in the completion.
- contains: the column's answer (the part after "####" if present) occurs in the completion.
- regex: the pattern is found anywhere in the completion (search).
- format: the whole stripped completion matches the pattern (fullmatch, '.' matches newlines).
  Both run on RE2 (trainer.config.compile_rule_pattern): time linear in the completion, so a
  pattern such as `(a+)+$` cannot stall a job or the API's score endpoint.
- length: 'target' mode gives -|len - target| / target (0 at the target, in characters);
  'max' mode gives -max(0, len - target) / target.
- string_check: OpenAI's string_check grader, on the raw strings (no normalisation): the completion
  compared with the column's value (or a fixed `reference`) by `operation`: eq (equal), ne (not
  equal), like (contains it), ilike (contains it, ignoring case).
- fuzzy_match: OpenAI's text_similarity grader with evaluation_metric fuzzy_match: the similarity in
  [0, 1] of the completion and the column's value (or a fixed `reference`), 2·M / (len(a) + len(b))
  with M the characters of the matching blocks (difflib's ratio, standard library; rapidfuzz's ratio
  is the same formula over the exact longest common subsequence, so values can differ slightly).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trainer.config import ModelComponent, RuleComponent, compile_rule_pattern, component_metric_names

Text = str | list[dict[str, str]]
Scorer = Callable[[Sequence[Text], Sequence[str], Sequence[dict[str, Any]]], Sequence[float]]


class RewardError(RuntimeError):
    """A reward component failed or produced an unusable value; the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Answer normalisation (exact_match, contains)

_NUMBER = re.compile(r"-?(?:\$\s?)?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def reference_answer(value: Any) -> str:
    """The answer a dataset column states: the part after the last '####' (GSM8K) or the whole value."""
    text = str(value)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return text.strip()


def extract_answer(completion: str) -> str:
    """The final answer of a completion: after the last '####', else the last \\boxed{}, else the last number."""
    if "####" in completion:
        tail = completion.rsplit("####", 1)[1].strip()
        match = _NUMBER.search(tail)
        return match.group(0) if match else tail.split("\n", 1)[0].strip()
    boxed = _BOXED.findall(completion)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(completion)
    if numbers:
        return numbers[-1]
    return completion.strip()


def normalize_answer(text: str) -> str:
    """Canonical form for comparison: numbers lose $ , and trailing zeros; other text is casefolded."""
    text = text.strip().rstrip(".").strip()
    candidate = text.replace(",", "").replace("$", "").replace(" ", "")
    try:
        number = float(candidate)
    except ValueError:
        return " ".join(text.casefold().split())
    if math.isfinite(number) and number == int(number):
        return str(int(number))
    return repr(number)


def _column(columns: dict[str, Any], name: str, rule: str, row: int) -> Any:
    if name not in columns:
        available = ", ".join(sorted(columns)) or "none"
        raise RewardError(
            f"rule '{rule}' reads the dataset column '{name}', but row {row} has no such column "
            f"(columns: {available}); set 'column' on the rule to one of them"
        )
    return columns[name]


# ---------------------------------------------------------------------------------------------
# Rules: each maps (prompts, completions, columns) to one float per row.


def _exact_match(spec: RuleComponent) -> Scorer:
    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for i, (completion, row) in enumerate(zip(completions, columns, strict=True)):
            expected = normalize_answer(reference_answer(_column(row, spec.column, "exact_match", i)))
            out.append(float(normalize_answer(extract_answer(completion)) == expected))
        return out

    return score


def _contains(spec: RuleComponent) -> Scorer:
    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for i, (completion, row) in enumerate(zip(completions, columns, strict=True)):
            needle = reference_answer(_column(row, spec.column, "contains", i)).casefold()
            out.append(float(bool(needle) and needle in completion.casefold()))
        return out

    return score


def _regex(spec: RuleComponent) -> Scorer:
    pattern = compile_rule_pattern(spec.pattern or "")

    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        return [float(pattern.search(c) is not None) for c in completions]

    return score


def _format(spec: RuleComponent) -> Scorer:
    pattern = compile_rule_pattern(spec.pattern or "", dotall=True)

    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        return [float(pattern.fullmatch(c.strip()) is not None) for c in completions]

    return score


def _length(spec: RuleComponent) -> Scorer:
    target = float(spec.target_length or 1)
    distance: Callable[[int], float] = {
        "target": lambda n: abs(n - target),
        "max": lambda n: max(0.0, n - target),
    }[spec.length_mode]

    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        return [-distance(len(c)) / target for c in completions]

    return score


_STRING_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "eq": lambda text, ref: text == ref,
    "ne": lambda text, ref: text != ref,
    "like": lambda text, ref: ref in text,
    "ilike": lambda text, ref: ref.casefold() in text.casefold(),
}


def _string_check(spec: RuleComponent) -> Scorer:
    check = _STRING_CHECKS[spec.operation or "eq"]

    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for i, (completion, row) in enumerate(zip(completions, columns, strict=True)):
            ref = spec.reference if spec.reference is not None else _column(row, spec.column, "string_check", i)
            out.append(float(check(completion, ref if isinstance(ref, str) else str(ref))))
        return out

    return score


def _fuzzy_match(spec: RuleComponent) -> Scorer:
    def score(prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for i, (completion, row) in enumerate(zip(completions, columns, strict=True)):
            ref = spec.reference if spec.reference is not None else _column(row, spec.column, "fuzzy_match", i)
            out.append(difflib.SequenceMatcher(None, completion, ref if isinstance(ref, str) else str(ref)).ratio())
        return out

    return score


RULES: dict[str, Callable[[RuleComponent], Scorer]] = {
    "exact_match": _exact_match,
    "contains": _contains,
    "regex": _regex,
    "format": _format,
    "length": _length,
    "string_check": _string_check,
    "fuzzy_match": _fuzzy_match,
}


# ---------------------------------------------------------------------------------------------
# Model component: a sequence-classification model scored at the last non-pad token.


class ModelScorer:
    """A sequence-classification reward model (e.g. the output of a `reward` job).

    Prompt + completion go through the reward model's own tokenizer: as a user/assistant
    conversation through its chat template when it has one, else as plain concatenated text.
    Batches are right-padded; the Hugging Face classifier pools at the last non-pad token
    (decoder models) or its own pooling position (encoders such as BERT).
    """

    def __init__(
        self,
        path: str,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        max_length: int = 2048,
        *,
        trust_remote_code: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise RewardError(f"reward model '{path}' could not be loaded as a sequence classifier: {exc}") from exc
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # keep the end of the completion, where the answer is
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(device).eval().requires_grad_(False)
        self.device = device
        self.batch_size = batch_size
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", max_length) or max_length)

    def text(self, prompt: Text, completion: str) -> str:
        """The string the reward model reads for one (prompt, completion)."""
        if self.tokenizer.chat_template:
            messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            messages.append({"role": "assistant", "content": completion})
            return str(self.tokenizer.apply_chat_template(messages, tokenize=False))
        if isinstance(prompt, list):
            prompt = "\n".join(m["content"] for m in prompt)
        return prompt + completion

    @torch.no_grad()
    def __call__(
        self, prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]
    ) -> list[float]:
        texts = [self.text(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
                add_special_tokens=not self.tokenizer.chat_template,
            ).to(self.device)
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, 1)
            scores.extend(logits[:, 0].float().cpu().tolist())
        return scores


# ---------------------------------------------------------------------------------------------
# The weighted sum.


class Reward:
    """Callable weighted sum of named components; see the module docstring."""

    def __init__(self, named: list[tuple[str, float, Scorer]]):
        self.components = named

    @property
    def names(self) -> list[str]:
        return [name for name, _, _ in self.components]

    def __call__(
        self, prompts: Sequence[Text], completions: Sequence[str], columns: Sequence[dict[str, Any]]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not len(prompts) == len(completions) == len(columns):
            raise ValueError(
                f"reward needs one prompt and one columns dict per completion, got "
                f"{len(prompts)} prompts, {len(completions)} completions, {len(columns)} column rows"
            )
        per_component: dict[str, torch.Tensor] = {}
        total = torch.zeros(len(completions), dtype=torch.float32)
        for name, weight, scorer in self.components:
            try:
                values = torch.as_tensor(list(scorer(prompts, completions, columns)), dtype=torch.float32)
            except RewardError:
                raise
            except Exception as exc:
                raise RewardError(f"reward component '{name}' failed: {type(exc).__name__}: {exc}") from exc
            if values.shape != total.shape:
                raise RewardError(
                    f"reward component '{name}' returned {tuple(values.shape)} scores "
                    f"for {len(completions)} completions"
                )
            bad = (~torch.isfinite(values)).nonzero().flatten()
            if len(bad):
                raise RewardError(
                    f"reward component '{name}' returned {values[bad[0]].item()} for completion {bad[0].item()} "
                    f"({len(bad)} non-finite values in total)"
                )
            per_component[name] = values
            total += weight * values
        return total, per_component


def build_reward(
    components: Sequence[ModelComponent | RuleComponent],
    device: str | torch.device = "cpu",
    *,
    trust_remote_code: bool = False,
) -> Reward:
    """Build the weighted-sum reward of a spec; models are loaded once here, from safetensors (raises RewardError).

    `trust_remote_code` lets a reward model with custom code run it (the spec's setting; off by default).
    """
    if not components:
        raise RewardError("the reward has no components: give at least one model or rule")
    named: list[tuple[str, float, Scorer]] = []
    for name, component in zip(component_metric_names(list(components)), components, strict=True):
        scorer: Scorer
        if isinstance(component, ModelComponent):
            scorer = ModelScorer(component.model, device=device, trust_remote_code=trust_remote_code)
        else:
            scorer = RULES[component.rule](component)
        named.append((name, component.weight, scorer))
    return Reward(named)
