"""`alignd worker` running a fake trainer instead of the trainer: a real worker process, fast.

The one fake worker of the test suite: the worker tests (start_worker(fake_trainer=True)), the client,
CLI and dashboard tests (tests/live.py, tests/dashboard/conftest.py) and bench/load.py start it as
`python -m tests.worker.fake_worker` from the repository root, with the ALIGND_* environment of the
server under test.
The replacement is made before Celery forks its pool processes, so they inherit it.

Fault tests widen the windows they kill the worker in with delays (seconds, environment variables):
- FAKE_PREPARE_SECONDS: after the claim, before the attempt is prepared (preparation);
- FAKE_UPLOAD_SECONDS: after a checkpoint archive is in the store, before its row is committed;
- FAKE_FINAL_WRITE_SECONDS: inside the transaction that writes the final status, before it commits;
- FAKE_VISIBILITY_TIMEOUT: the Redis visibility timeout of the worker's Celery app.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.core.settings import Settings
from worker import celery_app, main, relay, runner

FAKE_TRAINER = Path(os.environ.get("FAKE_TRAINER") or Path(__file__).with_name("fake_trainer.py"))
"""The stand-in trainer: tests/worker/fake_trainer.py (the protocol, resume, faults), or the script
FAKE_TRAINER names (tests/dashboard/fake_trainer.py: every algorithm's metrics and samples)."""
_real_command = runner.trainer_command


def fake_trainer_command(spec: Path, output: Path, events: Path, resume: Path | None, settings: Settings) -> list[str]:
    args = _real_command(spec, output, events, resume, settings)
    assert args[:3] == [sys.executable, "-m", "trainer"]
    return [sys.executable, str(FAKE_TRAINER), *args[3:]]


def delayed(variable: str, function: Callable[..., Any], after: bool = False) -> Callable[..., Any]:
    """`function`, sleeping `$variable` seconds before (or after) it runs; itself when unset."""
    seconds = float(os.environ.get(variable) or 0)
    if not seconds:
        return function

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not after:
            time.sleep(seconds)
        result = function(*args, **kwargs)
        if after:
            time.sleep(seconds)
        return result

    return wrapper


if __name__ == "__main__":
    runner.trainer_command = fake_trainer_command  # type: ignore[assignment]
    runner._prepare = delayed("FAKE_PREPARE_SECONDS", runner._prepare)
    relay.EventRelay._archive = delayed("FAKE_UPLOAD_SECONDS", relay.EventRelay._archive, after=True)
    relay._HANDLERS["done"] = delayed("FAKE_FINAL_WRITE_SECONDS", relay._HANDLERS["done"])
    if os.environ.get("FAKE_VISIBILITY_TIMEOUT"):
        celery_app.REDIS_VISIBILITY_TIMEOUT = int(os.environ["FAKE_VISIBILITY_TIMEOUT"])
        _create_app = main.create_app

        def create_app(settings: Settings) -> Any:  # and look for overdue messages every second
            app = _create_app(settings)
            options = {"unacked_restore_interval": 1, "unacked_restore_throttle": 1}
            app.conf.broker_transport_options = {**app.conf.broker_transport_options, **options}
            return app

        main.create_app = create_app  # type: ignore[assignment]

    from cli.main import app

    app(["worker"])
