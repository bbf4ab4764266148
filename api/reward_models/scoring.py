"""Scoring off the API's event loop: one child process per score request, with a deadline.

The child is forked from a forkserver that has already imported the trainer's reward code, so it
starts in milliseconds; it makes the reward's models local (hub cache, checkpoint cache), builds
the reward exactly as a grpo/ppo job would and scores. The API process only waits on a pipe, so a
slow or hostile reward cannot stall other requests, and the models it loads never enter the API
process. Past `score_timeout_seconds` the child is killed (504 `score_timeout`); at most
`max_concurrent_scores` children run at once per API process (503 `scoring_busy`, Retry-After).
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass, field
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

import anyio
from anyio.to_thread import run_sync

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


class _Slots:
    """Scoring children running in this process; touched only from the event loop, so no lock."""

    running = 0


async def score(task: ScoreTask, settings: Settings) -> Scores:
    """Score in a child process; 503 when `max_concurrent_scores` are running, 504 past the deadline."""
    if _Slots.running >= settings.max_concurrent_scores:
        raise ScoringBusy(
            f"{_Slots.running} scoring requests are running on this server (ALIGND_MAX_CONCURRENT_SCORES); "
            "retry in a few seconds"
        )
    _Slots.running += 1
    try:
        outcome = await _in_child(task, settings)
    finally:
        _Slots.running -= 1
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


async def _in_child(task: ScoreTask, settings: Settings) -> tuple[Any, ...]:
    context = await run_sync(_forkserver)  # outside the deadline: the first call imports torch there
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(writer, task, settings), daemon=True, name="alignd-score")
    try:
        with anyio.fail_after(settings.score_timeout_seconds):
            await run_sync(process.start)
            writer.close()
            await anyio.wait_readable(reader.fileno())
        try:
            outcome: tuple[Any, ...] = reader.recv()
        except EOFError:
            outcome = ("error", f"it exited without an answer (exit code {process.exitcode})")
        return outcome
    except TimeoutError:
        raise ScoreTimeout(
            f"scoring took longer than {settings.score_timeout_seconds:g} s (ALIGND_SCORE_TIMEOUT_SECONDS) and was "
            "stopped; score fewer or shorter completions, or use a smaller reward model"
        ) from None
    finally:
        reader.close()
        writer.close()
        if process.pid is not None:
            if process.is_alive():
                process.kill()  # past its deadline, or the client went away
            with anyio.CancelScope(shield=True):
                await run_sync(process.join)


@cache
def _forkserver() -> ForkServerContext:
    """The forkserver context, with the server started and its imports done (a first child has run)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["trainer.rewards", __name__])
    first = context.Process(target=_ready, daemon=True, name="alignd-score-warmup")
    first.start()
    first.join()
    return context


def _ready() -> None:
    """A first child: forking it waits until the forkserver has imported the trainer."""


def _child(conn: Connection, task: ScoreTask, settings: Settings) -> None:
    try:
        outcome = _score_here(task, settings)
    except Exception as exc:  # reported to the API process, which logs it and answers 500
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(outcome)
    conn.close()


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
