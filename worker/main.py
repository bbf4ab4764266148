"""`alignd worker`: a Celery worker for training jobs, plus the reaper.

Concurrency is one job per `gpus_per_job` GPUs (so one per GPU by default, and one on a CPU
machine). GPUs are counted in a throw-away subprocess, because initialising CUDA in a process that
Celery's prefork pool then forks breaks CUDA in the children.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from celery import signals

from api.core.broker import sender
from api.core.settings import Settings
from worker import runner
from worker.celery_app import create_app
from worker.reaper import ReaperThread

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, extra_args: list[str] | None = None) -> None:
    """Run a worker in this process until it is shut down (SIGTERM: warm, SIGQUIT: cold)."""
    if settings.worker_gpus is None:
        settings = settings.model_copy(update={"worker_gpus": count_gpus()})
    app = create_app(settings)
    signals.worker_process_init.connect(_install_handback_handler, weak=False)
    # A pool without Celery's event loop (the kombu SQLAlchemy transport of the embedded worker) is
    # "threaded", and billiard then points every catchable signal at its own exit handler right after
    # worker_process_init (sigprotection): a hand-back would kill the pool process, its trainer
    # unsaved. So the handler is installed again as each job starts.
    signals.task_prerun.connect(_install_handback_handler, weak=False)
    signals.worker_shutting_down.connect(_hand_back_running_jobs, weak=False)
    reaper = ReaperThread(settings, sender(app, settings.queue), settings.resend_unclaimed_seconds)
    reaper.start()
    argv = [
        "worker",
        "--queues",
        settings.queue,
        "--concurrency",
        str(job_slots(settings)),
        "--pool",
        "prefork",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        *(extra_args or []),
    ]
    if settings.worker_id:
        argv += ["--hostname", settings.worker_id]
    try:
        app.worker_main(argv)
    finally:
        reaper.stop()


def _install_handback_handler(**_: Any) -> None:
    """In each pool process: HANDBACK_SIGNAL asks the running job to be handed back (worker/runner.py)."""
    signal.signal(runner.HANDBACK_SIGNAL, runner.request_handback)


def _hand_back_running_jobs(how: str = "Warm", **_: Any) -> None:
    """In the main process, on a warm shutdown: tell every pool process to hand its job back now,
    instead of Celery waiting for the running task (a training job can run for hours)."""
    if how != "Warm":
        return  # a cold shutdown terminates the pool; the trainers die with it and the lease expires
    for pid in _child_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, runner.HANDBACK_SIGNAL)


def _child_pids() -> list[int]:
    """This process's children (the pool processes), read from /proc. Not billiard's active_children():
    that reaps children that already exited, which the pool must see exit itself or its shutdown hangs."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(stat.parent.name))
    return found


def job_slots(settings: Settings) -> int:
    """How many jobs this worker runs at once."""
    return max(1, (settings.worker_gpus or 0) // settings.gpus_per_job)


def count_gpus() -> int:
    """CUDA devices torch can see, counted in a subprocess (0 when torch or CUDA is missing)."""
    probe = "import torch; print(torch.cuda.device_count())"
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        logger.warning("could not count GPUs; running one job at a time")
        return 0


if __name__ == "__main__":
    from api.core.settings import get_settings

    run_worker(get_settings())
