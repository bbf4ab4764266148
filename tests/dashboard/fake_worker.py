"""`python -m tests.dashboard.fake_worker`: the real worker (Settings from ALIGND_*), with
tests/dashboard/fake_trainer.py in place of `python -m trainer` (set before Celery forks its pool)."""

from __future__ import annotations

import sys
from pathlib import Path

from api.core.settings import Settings, get_settings
from worker import runner
from worker.main import run_worker

FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
_real_command = runner.trainer_command


def fake_trainer_command(spec: Path, output: Path, events: Path, resume: Path | None, settings: Settings) -> list[str]:
    args = _real_command(spec, output, events, resume, settings)
    assert args[:3] == [sys.executable, "-m", "trainer"]
    return [sys.executable, str(FAKE_TRAINER), *args[3:]]


if __name__ == "__main__":
    runner.trainer_command = fake_trainer_command
    run_worker(get_settings())
