"""`alignd worker` with tests/worker/fake_trainer.py in place of `python -m trainer` (a live worker whose
jobs take a second: for the client and CLI tests, where training itself is not what is tested).

Run as `python -m tests.client.fake_worker` with the ALIGND_* environment of the server under test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from api.core.settings import Settings, get_settings
from worker import runner
from worker.main import run_worker

FAKE_TRAINER = Path(__file__).resolve().parents[1] / "worker" / "fake_trainer.py"
real_command = runner.trainer_command


def fake_command(spec: Path, output: Path, events: Path, resume: Path | None, settings: Settings) -> list[str]:
    args = real_command(spec, output, events, resume, settings)
    assert args[:3] == [sys.executable, "-m", "trainer"]
    return [sys.executable, str(FAKE_TRAINER), *args[3:]]


if __name__ == "__main__":
    runner.trainer_command = fake_command  # type: ignore[assignment]  # the prefork pool inherits it
    run_worker(get_settings())
