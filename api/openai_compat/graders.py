"""OpenAI graders <-> alignd reward components (trainer.config.RewardComponent).

Honoured (api/README.md, "OpenAI-compatible endpoints", has the full rules):
- `string_check` -> the `string_check` rule (same operations on the raw strings). `input` must be
  `{{sample.output_text}}`; `reference` is a literal string or `{{item.<column>}}` (a column of the
  training row).
- `text_similarity` with `evaluation_metric` `fuzzy_match` -> the `fuzzy_match` rule (the similarity
  itself, 0 to 1, as the reward; `input` and `reference` as for string_check; no `pass_threshold`).
- `score_model` -> a model component: `model` must be a MODEL_REF of a sequence-classification
  reward model this tenant can use; `input`, `range` and `sampling_params` are not used.
- `multi` -> the weighted sum of its graders, when `calculate_output` is a weighted sum of their
  names (`0.7 * accuracy + 0.3 * format`, `-`, `/ 2` and parentheses allowed; no constant term, no
  products of graders, no functions).
Refused by name (400 `unsupported_grader`): `text_similarity` with any other metric (bleu, gleu,
meteor, cosine, rouge_*), `python`, `label_model`, anything else.

The reverse, `grader_view`, shows any grpo job's reward as a grader again (a rule without an OpenAI
counterpart shows as a `python` grader whose source names the rule; it cannot be submitted back).
"""

from __future__ import annotations

import ast
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.openai_compat.errors import Unsupported

OUTPUT_TEXT = "{{sample.output_text}}"
_TEMPLATE = re.compile(r"\s*\{\{\s*([^{}]*?)\s*\}\}\s*")
_COLUMN = re.compile(r"item\.([^.\s{}]+)")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


class GraderRefused(Unsupported):
    code = "unsupported_grader"


class _Grader(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)


class StringCheck(_Grader):
    type: Literal["string_check"]
    input: str
    reference: str = Field(max_length=10000)
    operation: str


class TextSimilarity(_Grader):
    type: Literal["text_similarity"]
    input: str
    reference: str = Field(max_length=10000)
    evaluation_metric: str
    pass_threshold: float | None = None


class ScoreModel(_Grader):
    type: Literal["score_model"]
    model: str = Field(min_length=1, max_length=500)
    input: list[Any]
    range: list[float] | None = None
    sampling_params: dict[str, Any] | None = None


class Multi(_Grader):
    type: Literal["multi"]
    graders: dict[str, Any]
    calculate_output: str = Field(min_length=1, max_length=2000)


_NOT_HONOURED = {
    "text_similarity": "alignd's fuzzy_match rule is its only text-similarity metric",
    "python": "alignd runs no user code in its reward",
    "label_model": "alignd's model components are reward models that return a score, not label classifiers",
    "endpoint": "alignd calls no external grading endpoint",
}
_ALTERNATIVES = "use string_check, score_model (a reward model from GET /v1/models or job:<id>), or multi of those"


def components_for(grader: Any, param: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The reward components of a grader, and the request param each one came from."""
    if not isinstance(grader, dict):
        raise GraderRefused("the grader must be an object with a type", param=param)
    if grader.get("type") == "multi":
        return _multi(grader, param)
    return [_single(grader, param, 1.0, None)], [param]


def _parse(model: type[BaseModel], grader: dict[str, Any], param: str) -> Any:
    try:
        return model.model_validate(grader)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise GraderRefused(
            f"{grader.get('type')} grader: {where}: {first['msg']}", param=f"{param}.{where}" if where else param
        ) from None


def _describe(grader: dict[str, Any]) -> str:
    name = grader.get("name")
    return f"{grader.get('type')} grader {name!r}" if isinstance(name, str) else f"{grader.get('type')} grader"


def _single(grader: Any, param: str, weight: float, key: str | None) -> dict[str, Any]:
    if not isinstance(grader, dict):
        raise GraderRefused("each grader must be an object with a type", param=param)
    kind = grader.get("type")
    if kind == "string_check":
        return _string_check(_parse(StringCheck, grader, param), param, weight, key)
    if kind == "score_model":
        score = _parse(ScoreModel, grader, param)
        return {"type": "model", "model": score.model, "name": component_name(key or score.name), "weight": weight}
    if kind == "multi":
        raise GraderRefused(
            f"{_describe(grader)} inside a multi grader cannot be honoured: nest no multi graders", param=param
        )
    if kind == "text_similarity":
        similarity = _parse(TextSimilarity, grader, param)
        if similarity.evaluation_metric != "fuzzy_match":
            raise GraderRefused(
                f"{_describe(grader)} (evaluation_metric {similarity.evaluation_metric!r}) cannot be honoured: "
                f"{_NOT_HONOURED[kind]}; {_ALTERNATIVES}",
                param=f"{param}.evaluation_metric",
            )
        if similarity.pass_threshold is not None:
            raise GraderRefused(
                f"{_describe(grader)}: pass_threshold cannot be honoured: alignd rewards the similarity itself "
                "(0 to 1); leave it out",
                param=f"{param}.pass_threshold",
            )
        where = f"text_similarity grader {similarity.name!r}"
        component = {"type": "rule", "rule": "fuzzy_match", "name": component_name(key or similarity.name)}
        return {**component, "weight": weight, **_compare(where, similarity.input, similarity.reference, param)}
    if kind in _NOT_HONOURED:
        raise GraderRefused(
            f"{_describe(grader)} cannot be honoured: {_NOT_HONOURED[kind]}; {_ALTERNATIVES}", param=param
        )
    raise GraderRefused(f"unknown grader type {kind!r}; {_ALTERNATIVES}", param=f"{param}.type")


def _string_check(check: StringCheck, param: str, weight: float, key: str | None) -> dict[str, Any]:
    where = f"string_check grader {check.name!r}"
    if check.operation not in ("eq", "ne", "like", "ilike"):
        raise GraderRefused(
            f"{where}: operation {check.operation!r} cannot be honoured (eq, ne, like or ilike)",
            param=f"{param}.operation",
        )
    component: dict[str, Any] = {
        "type": "rule",
        "rule": "string_check",
        "name": component_name(key or check.name),
        "weight": weight,
        "operation": check.operation,
    }
    return {**component, **_compare(where, check.input, check.reference, param)}


def _compare(where: str, input: str, reference: str, param: str) -> dict[str, str]:
    """What a rule compares the completion with: {"reference": literal} or {"column": name}."""
    inp = _TEMPLATE.fullmatch(input)
    if inp is None or inp.group(1) != "sample.output_text":
        raise GraderRefused(
            f"{where}: input {input!r} cannot be honoured: alignd grades the sampled completion, {OUTPUT_TEXT}",
            param=f"{param}.input",
        )
    if "{{" not in reference and "}}" not in reference:
        return {"reference": reference}
    ref = _TEMPLATE.fullmatch(reference)
    column = _COLUMN.fullmatch(ref.group(1)) if ref else None
    if column is None:
        raise GraderRefused(
            f"{where}: reference {reference!r} cannot be honoured: give a literal string or one column of "
            "the training row as {{item.<column>}}",
            param=f"{param}.reference",
        )
    return {"column": column.group(1)}


def _multi(grader: dict[str, Any], param: str) -> tuple[list[dict[str, Any]], list[str]]:
    graders = grader.get("graders")
    if isinstance(graders, dict) and isinstance(graders.get("type"), str):
        graders = {graders.get("name"): graders}  # the openai SDK types `graders` as one grader
        grader = {**grader, "graders": graders}
    multi = _parse(Multi, grader, param)
    weights = _weighted_sum(multi.calculate_output, set(multi.graders), f"{param}.calculate_output")
    components, params = [], []
    for name, weight in weights.items():
        where = f"{param}.graders.{name}"
        components.append(_single(multi.graders[name], where, weight, name))
        params.append(where)
    return components, params


def _weighted_sum(expression: str, names: set[str], param: str) -> dict[str, float]:
    """`0.5 * a + b / 2 - c` -> {a: 0.5, b: 0.5, c: -1.0}; anything but a weighted sum of names is refused."""

    def refuse(what: str) -> GraderRefused:
        return GraderRefused(
            f"multi grader: calculate_output {expression!r} cannot be honoured ({what}); alignd sums weighted "
            "components, so write it as a weighted sum of the graders' names, e.g. 0.7 * a + 0.3 * b",
            param=param,
        )

    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        raise refuse("it does not parse") from None

    def walk(node: ast.AST) -> tuple[dict[str, float], float]:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return {}, float(node.value)
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise refuse(f"{node.id!r} names no grader; graders: {', '.join(sorted(names))}")
            return {node.id: 1.0}, 0.0
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
            terms, const = walk(node.operand)
            sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
            return {k: sign * v for k, v in terms.items()}, sign * const
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            (left, lc), (right, rc) = walk(node.left), walk(node.right)
            sign = -1.0 if isinstance(node.op, ast.Sub) else 1.0
            merged = dict(left)
            for k, v in right.items():
                merged[k] = merged.get(k, 0.0) + sign * v
            return merged, lc + sign * rc
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div):
            (left, lc), (right, rc) = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div):
                if right or rc == 0:
                    raise refuse(f"{ast.unparse(node)} divides by a grader or by zero")
                return {k: v / rc for k, v in left.items()}, lc / rc
            if left and right:
                raise refuse(f"{ast.unparse(node)} multiplies graders")
            if not left and not right:
                return {}, lc * rc
            terms, const, factor = (left, lc, rc) if left else (right, rc, lc)
            return {k: v * factor for k, v in terms.items()}, const * factor
        raise refuse(f"{ast.unparse(node)} is not a weighted sum")

    terms, constant = walk(tree.body)
    if constant:
        raise refuse("it adds a constant")
    terms = {k: v for k, v in terms.items() if v}
    if not terms:
        raise refuse("no grader has a weight")
    return terms


def component_name(name: str) -> str:
    """A grader's name as a component name (metrics are rewards/<name>): [A-Za-z0-9_.-], at most 64."""
    return _NAME_CHARS.sub("_", name.strip())[:64] or "grader"


# ---- the other way: a job's reward shown as a grader ----------------------------------------------


def grader_view(reward: list[dict[str, Any]] | None, reward_model_id: str | None) -> dict[str, Any]:
    if reward_model_id is not None:
        source = f"# alignd reward model {reward_model_id}: GET /v1/reward-models/{reward_model_id}"
        return {"type": "python", "name": "reward_model", "source": source}
    components = reward or []
    if len(components) == 1 and components[0].get("weight", 1.0) == 1.0:
        return _single_view(components[0], _view_name(components[0]))
    graders: dict[str, Any] = {}
    terms = []
    for component in components:
        name = base = _view_name(component)
        n = 2
        while name in graders:
            name, n = f"{base}_{n}", n + 1
        graders[name] = _single_view(component, name)
        terms.append(f"{component.get('weight', 1.0):g} * {name}")
    # One grader: the form the openai SDK types (`graders` is one grader); several: OpenAI's documented
    # map of name -> grader (which the SDK's types cannot hold; see api/README.md).
    shown: dict[str, Any] = next(iter(graders.values())) if len(graders) == 1 else graders
    return {"type": "multi", "name": "reward", "graders": shown, "calculate_output": " + ".join(terms) or "0"}


def _view_name(component: dict[str, Any]) -> str:
    return str(component.get("name") or (component.get("rule") if component.get("type") == "rule" else "model"))


def _single_view(component: dict[str, Any], name: str) -> dict[str, Any]:
    if component.get("type") == "model":
        return {"type": "score_model", "name": name, "model": component.get("model", ""), "input": []}
    if component.get("rule") in ("string_check", "fuzzy_match"):
        reference = component.get("reference")
        if reference is None:
            reference = "{{item.%s}}" % component.get("column", "answer")  # noqa: UP031 (braces)
        view = {"name": name, "input": OUTPUT_TEXT, "reference": reference}
        if component["rule"] == "fuzzy_match":
            return {"type": "text_similarity", **view, "evaluation_metric": "fuzzy_match"}
        return {"type": "string_check", **view, "operation": component.get("operation", "eq")}
    return {"type": "python", "name": name, "source": "# alignd rule " + json.dumps(component, sort_keys=True)}
