"""`alignd worker` running tests/worker/fake_trainer.py instead of the trainer: a real worker process, fast.

Started as `python -m tests.worker.fake_worker` from the repository root (start_worker(fake_trainer=True)).
The replacement is made before Celery forks its pool processes, so they inherit it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from api.core.settings import Settings
from worker import runner

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
_real_command = runner.trainer_command


def fake_trainer_command(spec: Path, output: Path, events: Path, resume: Path | None, settings: Settings) -> list[str]:
    args = _real_command(spec, output, events, resume, settings)
    assert args[:3] == [sys.executable, "-m", "trainer"]
    return [sys.executable, str(FAKE_TRAINER), *args[3:]]


if __name__ == "__main__":
    runner.trainer_command = fake_trainer_command  # type: ignore[assignment]

    from cli.main import app

    app(["worker"])
