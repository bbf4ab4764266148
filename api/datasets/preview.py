"""Dataset rows as the trainer sees them: through a base model's tokenizer and chat template.

The rendering runs in a forked child (api/core/forked.py), the same as reward scoring, not in a thread
of the API process, because: the model may first have to be fetched (hub) or extracted (checkpoint
archive); loading a tokenizer pulls transformers into the process; and a chat template is Jinja that the
model's author wrote, whose run time on a row nobody bounds (a thread cannot be stopped at a deadline, a
process can). The child uses the trainer's own functions (trainer.models.load_tokenizer, trainer.data's
render / render_prompt / tokenize_prompt / tokenize_completion), so what the preview shows is what the
trainer tokenises, and cuts with the trainer's truncation policy (trainer/data.py's docstring).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from api.core import forked
from api.core.errors import AlignError
from api.core.settings import Settings
from api.models_dir import references


class PreviewBusy(AlignError):
    status_code = 503
    code = "preview_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "5"})


class PreviewTimeout(AlignError):
    status_code = 504
    code = "preview_timeout"


@dataclass
class PreviewTask:
    """Everything the child needs, as plain picklable data (no database session)."""

    source: references.Source
    rows: list[Any]
    fmt: str
    max_length: int
    max_prompt_length: int


async def render_rows(task: PreviewTask, settings: Settings) -> list[dict[str, Any]]:
    """The rows rendered in a child process; 503 when its slots are all taken, 504 past the deadline."""
    outcome = await forked.run_in_child(_render_here, (task, settings), settings, busy=_busy, timeout=_timeout)
    match outcome:
        case ("ok", rows):
            return list(rows)
        case ("invalid_model", message, param):
            raise references.InvalidModelRef(message, param=param)
    raise RuntimeError(f"the preview process failed: {outcome[1]}")


def _busy(running: int) -> PreviewBusy:
    return PreviewBusy(
        f"{running} scoring or preview requests are running on this server (ALIGND_MAX_CONCURRENT_SCORES); "
        "retry in a few seconds"
    )


def _timeout(seconds: float) -> PreviewTimeout:
    return PreviewTimeout(
        f"rendering the rows took longer than {seconds:g} s (ALIGND_SCORE_TIMEOUT_SECONDS) and was stopped; "
        "preview fewer rows, or check the model's chat template"
    )


# --- in the child ------------------------------------------------------------------------------


def _render_here(task: PreviewTask, settings: Settings) -> forked.Outcome:
    """("ok", rows), or ("invalid_model", message, param) when the model or its tokenizer cannot be had."""
    from api.core.storage import storage_from_url

    storage = storage_from_url(settings.resolved_storage_url)
    try:
        tokenizer = references.load_tokenizer(task.source, settings, storage, param="model")
    except references.InvalidModelRef as exc:
        return ("invalid_model", exc.message, exc.param)
    return ("ok", [_render_row(tokenizer, row, task) for row in task.rows])


def _render_row(tokenizer: Any, row: Any, task: PreviewTask) -> dict[str, Any]:
    """One row as the trainer renders it: texts, token counts, and what max_length / max_prompt_length cut."""
    from trainer.data import DataError, render, render_prompt, tokenize_completion, tokenize_prompt
    from trainer.formats import PreferenceExample, PromptExample, RowError, parse_row

    try:
        example = parse_row(row, task.fmt)
        if isinstance(example, PromptExample):
            prompt_text, templated = render_prompt(tokenizer, example.prompt)
            completions: dict[str, str] = {}
        else:
            pairs = (
                {"chosen": example.chosen, "rejected": example.rejected}
                if isinstance(example, PreferenceExample)
                else {"completion": example.completion}
            )
            completions = {}
            for name, completion in pairs.items():
                prompt_text, completions[name], templated = render(tokenizer, example.prompt, completion)
                if not completions[name].strip():
                    raise DataError(f'"{name}" is empty after rendering; the trainer refuses this row')
    except RowError as exc:  # stored under older rules than the trainer's current ones
        return {"error": {"field": exc.field, "message": exc.message}}
    except DataError as exc:
        return {"error": {"field": None, "message": str(exc)}}
    tokens = {"prompt": len(tokenize_prompt(tokenizer, prompt_text, templated))}
    tokens |= {name: len(tokenize_completion(tokenizer, text)) for name, text in completions.items()}
    # trainer/data.py's policy: the prompt is cut from the left to max_prompt_length, then each completion
    # from the right so that prompt + completion fits in max_length.
    kept_prompt = min(tokens["prompt"], task.max_prompt_length)
    longest = max((tokens[name] for name in completions), default=0)
    return {
        "prompt": prompt_text,
        **completions,
        "templated": templated,
        "tokens": tokens,
        "total_tokens": tokens["prompt"] + longest,
        "prompt_truncated": tokens["prompt"] > task.max_prompt_length,
        "completion_truncated": longest > task.max_length - kept_prompt,
    }
