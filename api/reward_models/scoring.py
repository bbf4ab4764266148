"""Scoring off the API's event loop: one child process per score request, with a deadline (api/core/forked.py).

The child is forked from a forkserver that has already imported the trainer's reward code, so it
starts in milliseconds; it makes the reward's models local (hub cache, checkpoint cache), builds
the reward exactly as a grpo/ppo job would and scores. The API process only waits on a pipe, so a
slow or hostile reward cannot stall other requests, and the models it loads never enter the API
process. Past `score_timeout_seconds` the child is killed (504 `score_timeout`); at most
`max_concurrent_scores` children (scoring and dataset previews together) run at once per API process
(503 `scoring_busy`, Retry-After).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from api.core import forked
from api.core.errors import AlignError, InvalidRequest
from api.core.settings import Settings
from api.models_dir import references

Scores = tuple[list[float], dict[str, list[float]]]


class ScoringUnavailable(AlignError):
    status_code = 501
    code = "not_implemented"


class ScoringFailed(InvalidRequest):
    code = "reward_failed"


class ScoringBusy(AlignError):
    status_code = 503
    code = "scoring_busy"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": "5"}


class ScoreTimeout(AlignError):
    status_code = 504
    code = "score_timeout"


@dataclass
class ScoreTask:
    """Everything the child needs, as plain picklable data (no database session)."""

    components: list[Any]
    """trainer.config reward components; model components still name their MODEL_REF."""
    sources: dict[int, references.Source]
    """The checked source of each model component, by its index in `components`."""
    prompt: str | list[dict[str, str]]
    completions: list[str]
    fields: dict[str, Any] = field(default_factory=dict)


async def score(task: ScoreTask, settings: Settings) -> Scores:
    """Score in a child process; 503 when `max_concurrent_scores` are running, 504 past the deadline."""
    outcome = await forked.run_in_child(_score_here, (task, settings), settings, busy=_busy, timeout=_timeout)
    match outcome:
        case ("ok", scores):
            return scores
        case ("invalid_model", message, param):
            raise references.InvalidModelRef(message, param=param)
        case ("reward_failed", message):
            raise ScoringFailed(message, param="components")
        case ("unavailable", message):
            raise ScoringUnavailable(message)
    raise RuntimeError(f"the scoring process failed: {outcome[1]}")


def _busy(running: int) -> ScoringBusy:
    return ScoringBusy(
        f"{running} scoring requests are running on this server (ALIGND_MAX_CONCURRENT_SCORES); retry in a few seconds"
    )


def _timeout(seconds: float) -> ScoreTimeout:
    return ScoreTimeout(
        f"scoring took longer than {seconds:g} s (ALIGND_SCORE_TIMEOUT_SECONDS) and was "
        "stopped; score fewer or shorter completions, or use a smaller reward model"
    )


def _score_here(task: ScoreTask, settings: Settings) -> tuple[Any, ...]:
    """("ok", scores), or the expected failure as ("invalid_model" | "reward_failed" | "unavailable", ...)."""
    from api.core.storage import storage_from_url

    try:
        from trainer.rewards import RewardError, build_reward
    except ImportError as exc:
        return ("unavailable", f"scoring needs the trainer's reward functions, which are not installed: {exc}")
    storage = storage_from_url(settings.resolved_storage_url)
    local = list(task.components)
    n = len(task.completions)
    try:
        for i, source in task.sources.items():
            folder = references.local_folder(source, settings, storage, param=f"components[{i}].model")
            local[i] = local[i].model_copy(update={"model": str(folder)})
        reward = build_reward(local, device="cpu", trust_remote_code=settings.trust_remote_code)
        total, per_component = reward([task.prompt] * n, task.completions, [task.fields] * n)
    except references.InvalidModelRef as exc:
        return ("invalid_model", exc.message, exc.param)
    except RewardError as exc:
        return ("reward_failed", str(exc))
    return ("ok", (total.tolist(), {name: values.tolist() for name, values in per_component.items()}))
