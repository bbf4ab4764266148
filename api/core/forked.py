"""Model work off the API's event loop: one child process per request, with a deadline.

Scoring completions with a reward (api/reward_models/scoring.py) and rendering dataset rows with a
model's tokenizer and chat template (api/datasets/preview.py) both load model files, may fetch them
(hub, checkpoint archive) and run code whose cost the client controls (a regex, a Jinja template,
long texts). A thread cannot be stopped at a deadline; a process can. So each such request runs in a
child forked from a forkserver that has already imported the trainer (torch, transformers): it starts
in milliseconds, the models it loads never enter the API process, and the API process only waits on a
pipe. Past `score_timeout_seconds` the child is killed; at most `max_concurrent_scores` children run at
once per API process. Both limits are shared by every kind of child, since they share the CPU.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from functools import cache
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from typing import Any

import anyio
from anyio.to_thread import run_sync

from api.core.errors import AlignError
from api.core.settings import Settings

Outcome = tuple[Any, ...]
"""What a child answers: ("ok", result) or (error kind, ...) for its caller to map onto an AlignError."""

PRELOAD = [
    "trainer.rewards",
    "trainer.data",
    "trainer.models",
    "api.reward_models.scoring",
    "api.datasets.preview",
    "api.plan.lengths",
]
"""Imported once by the forkserver, so that no child pays for torch and transformers (nor for the modules
whose functions the children run)."""


class _Slots:
    """Children running in this process; touched only from the event loop, so no lock."""

    running = 0


async def run_in_child(
    target: Callable[..., Outcome],
    args: tuple[Any, ...],
    settings: Settings,
    *,
    busy: Callable[[int], AlignError],
    timeout: Callable[[float], AlignError],
) -> Outcome:
    """`target(*args)` in a forked child; `busy(running)` is raised when every slot is taken,
    `timeout(seconds)` past the deadline. An exception in the child comes back as ("error", text)."""
    if _Slots.running >= settings.max_concurrent_scores:
        raise busy(_Slots.running)
    _Slots.running += 1
    try:
        return await _in_child(target, args, settings, timeout)
    finally:
        _Slots.running -= 1


async def _in_child(
    target: Callable[..., Outcome], args: tuple[Any, ...], settings: Settings, timeout: Callable[[float], AlignError]
) -> Outcome:
    context = await run_sync(_forkserver)  # outside the deadline: the first call imports torch there
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(writer, target, args), daemon=True, name="alignd-child")
    try:
        with anyio.fail_after(settings.score_timeout_seconds):
            await run_sync(process.start)
            writer.close()
            await anyio.wait_readable(reader.fileno())
            # An answer larger than the pipe's buffer arrives in pieces, and the event loop may have left
            # the descriptor non-blocking (uvloop does): read the whole message blocking, in a thread.
            os.set_blocking(reader.fileno(), True)
            return await run_sync(_receive, reader, process, abandon_on_cancel=True)
    except TimeoutError:
        raise timeout(settings.score_timeout_seconds) from None
    finally:
        if process.pid is not None and process.is_alive():
            process.kill()  # past its deadline, or the client went away (an abandoned read then ends)
        reader.close()
        writer.close()
        if process.pid is not None:
            with anyio.CancelScope(shield=True):
                await run_sync(process.join)


def _receive(reader: Connection, process: Any) -> Outcome:
    try:
        outcome: Outcome = reader.recv()
    except EOFError:
        outcome = ("error", f"it exited without an answer (exit code {process.exitcode})")
    return outcome


@cache
def _forkserver() -> ForkServerContext:
    """The forkserver context, with the server started and its imports done (a first child has run)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, __name__])
    first = context.Process(target=_ready, daemon=True, name="alignd-child-warmup")
    first.start()
    first.join()
    return context


def _ready() -> None:
    """A first child: forking it waits until the forkserver has imported the trainer."""


def _child(conn: Connection, target: Callable[..., Outcome], args: tuple[Any, ...]) -> None:
    try:
        outcome = target(*args)
    except Exception as exc:  # reported to the API process, which logs it and answers 500
        outcome = ("error", f"{type(exc).__name__}: {exc}")
    conn.send(outcome)
    conn.close()
