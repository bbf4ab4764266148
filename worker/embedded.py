"""The embedded worker `alignd serve` starts when nothing is configured (settings.embedded).

It is `python -m worker` (the same worker as `alignd worker`, reaper included) in a subprocess on the
SQLite broker, not a thread inside the API: a Celery worker wants the main thread for its signal
handling, and a separate process keeps the API responsive while the worker relays events. The
subprocess gets the API's Settings through ALIGND_* variables (paths resolved, so a relative
`--data-dir` means the same folder), dies with its parent (parent-death signal), and stops with
`EmbeddedWorker.stop()`: a warm shutdown first (SIGTERM to the worker's main process only, as
`alignd worker` gets it from `docker stop`: its running job's trainer saves at its next step boundary,
the job goes back to the queue and resumes from that step at the next start; worker/runner.py), then
a cold one of the whole process group. Signalling the group at once would hit the pool processes too,
and a pool process killed by SIGTERM takes its trainer down before it can save. A job cut short by
the cold shutdown keeps its lease until it expires; the next start's reaper then resumes it from
its last checkpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from billiard.util import set_pdeathsig

from api.core.settings import Settings
from worker.runner import HANDBACK_GRACE_SECONDS

WARM_STOP_SECONDS = HANDBACK_GRACE_SECONDS + 20.0
"""How long a warm stop may take: the trainer's save at its step boundary, then the checkpoint's upload."""


@dataclass
class EmbeddedWorker:
    process: subprocess.Popen[bytes]
    log_file: Path

    def stop(self, grace: float = WARM_STOP_SECONDS) -> None:
        """Stop the worker: SIGTERM to its main process (warm: the running job is saved and handed
        back), then SIGQUIT (cold), then SIGKILL of its whole group, each after `grace` seconds."""
        for sig, group in ((signal.SIGTERM, False), (signal.SIGQUIT, True), (signal.SIGKILL, True)):
            if self.process.poll() is not None:
                return
            try:
                if group:
                    os.killpg(self.process.pid, sig)
                else:
                    self.process.send_signal(sig)
                self.process.wait(grace)
                return
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                continue

    def running(self) -> bool:
        return self.process.poll() is None


def start_embedded_worker(settings: Settings) -> EmbeddedWorker:
    """Start `python -m worker` for these settings in the background; its log goes to <data_dir>/worker.log."""
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_file = data_dir / "worker.log"
    env = {**os.environ, **settings_environment(settings), "PYTHONUNBUFFERED": "1"}
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
    return EmbeddedWorker(process, log_file)


def settings_environment(settings: Settings) -> dict[str, str]:
    """ALIGND_* variables that rebuild `settings` in another process."""
    values = settings.model_dump(exclude_none=True)
    if settings.s3_secret_access_key is not None:  # model_dump masks secrets
        values["s3_secret_access_key"] = settings.s3_secret_access_key.get_secret_value()
    values.update(
        data_dir=settings.data_dir.resolve(),
        database_url=settings.resolved_database_url,
        broker_url=settings.resolved_broker_url,
        storage_url=settings.resolved_storage_url,
        models_dir=settings.resolved_models_dir,
        work_dir=settings.resolved_work_dir,
    )
    return {f"ALIGND_{name.upper()}": str(value) for name, value in values.items()}


def _die_with_parent() -> None:
    set_pdeathsig(signal.SIGKILL)
