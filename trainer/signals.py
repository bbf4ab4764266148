"""What happens on SIGTERM and SIGUSR1? (DESIGN §7)

- SIGTERM: the run stops at once and saves nothing more (exit code 143).
- SIGUSR1: save and stop. The run finishes the step it is in, saves a resumable (intermediate)
  checkpoint of that step boundary, emits `{"type": "stopped", "step", "checkpoint"}` and exits with
  STOPPED_EXIT_CODE. `--resume` from that checkpoint continues exactly where it stopped. The worker
  sends it to pause a job and on its own warm shutdown. A run that reaches its last step first just
  finishes (final checkpoint, `done`, exit code 0).

The SIGUSR1 handler only sets a flag: the loop (trainer/loop.py) looks at it between steps, so a
signal that arrives during a step, a save or an evaluation never cuts anything short, and sending it
again changes nothing.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

STOPPED_EXIT_CODE = 75
"""Exit code of a run that saved and stopped on SIGUSR1 (EX_TEMPFAIL: "try again later", i.e. resume)."""

SAVE_AND_STOP_SIGNAL = signal.SIGUSR1

_save_and_stop = threading.Event()


class Terminated(BaseException):
    """Raised by the SIGTERM handler: stop now, save nothing more (exit code 143)."""


class Stopped(BaseException):
    """Raised by the loop after it saved at a step boundary on request (SIGUSR1).

    A BaseException, like Terminated, so no algorithm's `except Exception` turns it into an error."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"stopped at step {step}")
        self.step, self.checkpoint = step, checkpoint


def install_sigterm_handler() -> None:
    """SIGTERM raises Terminated in the main thread, so the run stops at once and saves nothing more."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)


def install_save_and_stop_handler() -> None:
    """SIGUSR1 asks the run to save at the next step boundary and stop (see `save_and_stop_requested`)."""
    signal.signal(SAVE_AND_STOP_SIGNAL, lambda signum, frame: _save_and_stop.set())


def request_save_and_stop() -> None:
    """What SIGUSR1 does: ask the loop to save and stop at its next step boundary (tests call it directly)."""
    _save_and_stop.set()


def save_and_stop_requested() -> bool:
    return _save_and_stop.is_set()


def clear_save_and_stop() -> None:
    """Forget a request (a new run in the same process, e.g. in-process tests)."""
    _save_and_stop.clear()
