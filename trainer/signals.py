"""What happens on SIGTERM? The run stops at once and saves nothing more (exit code 143, DESIGN §7)."""

from __future__ import annotations

import signal
from typing import Any


class Terminated(BaseException):
    """Raised by the SIGTERM handler: stop now, save nothing more (exit code 143)."""


def install_sigterm_handler() -> None:
    """SIGTERM raises Terminated in the main thread, so the run stops at once and saves nothing more."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
