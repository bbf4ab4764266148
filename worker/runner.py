"""Running one job: claim the row, resolve references, spawn the trainer, relay, finish.

`run_job(job_id, settings)` is what the Celery task calls and what tests call without a broker.

1. Claim (worker/attempt.py, through the life cycle in api/jobs/lifecycle.py): one conditional
   UPDATE (queued -> running, worker id, attempt + 1, lease, started_at). A delivery that changes no
   row (the job is running elsewhere, finished or cancelled) returns.
2. Prepare the attempt folder `<work_dir>/jobs/<job>/attempt-<n>/`: SPEC.json (every reference a
   local path, datasets downloaded from the store into `data/`, worker/references.py) and, on
   attempt > 1, the job's last intermediate checkpoint extracted for `--resume`.
3. Spawn `python -m trainer run SPEC --output DIR --events FILE [--resume CKPT]` in its own session
   (so a terminal's Ctrl-C reaches the worker, not the trainer) with the parent-death signal set
   (so a worker killed with SIGKILL takes its trainer along). With `gpus_per_job > 1` it is started
   through `accelerate launch --num_processes N`; each pool process gets its own GPUs through
   CUDA_VISIBLE_DEVICES (pool process i uses GPUs i*N .. i*N+N-1).
   The job's experiment trackers (W&B, MLflow: worker/integrations.py) are started here; one that
   cannot be used fails the job with `integration_unavailable` before the trainer starts.
4. Loop until the trainer exits: relay its events (worker/relay.py, which feeds the trackers), watch the heartbeat
   (worker/heartbeat.py) for a cancel or pause request or a lost lease. On cancel: SIGTERM the trainer,
   SIGKILL it after CANCEL_GRACE_SECONDS, relay what it wrote, mark the job cancelled; its
   checkpoints stay. On pause (the job is `pausing`): SAVE_AND_STOP_SIGNAL to the trainer, which
   saves a resumable checkpoint at its next step boundary and exits (trainer/signals.py); the relay
   uploads that checkpoint as any periodic one, then the job becomes `paused` and this worker is free.
   A resume queues it again and the next claim continues from that checkpoint (step 2). A trainer
   that reaches its last step first just succeeds. A trainer that exits without `done`, `error` or
   `stopped` fails the job with a sentence and the last lines of its output. Every status change
   goes through the life cycle.
5. Remove the attempt's local checkpoint and dataset copies (the store has them); SPEC.json,
   events.jsonl and trainer.log stay in the attempt folder for debugging.

A warm shutdown of the worker (SIGTERM) hands the running job back at once rather than waiting for
it to finish (hours): the worker's main process forwards HANDBACK_SIGNAL to its pool processes
(worker/main.py), the runner's loop then asks the trainer to save and stop (SAVE_AND_STOP_SIGNAL, as
a pause does) and waits up to HANDBACK_GRACE_SECONDS for it; a trainer whose step does not end in
time is stopped without saving (SIGTERM, then SIGKILL), so the job resumes from its last periodic
checkpoint. The runner relays what the trainer wrote (uploading the checkpoint it saved), moves the
job back to `queued` through the life cycle (`hand_back`; an attempt that saved at its step boundary
lost nothing and is given back, otherwise it counts) and sends it to the broker, so another worker
resumes it within seconds, from the step it saved at, instead of after the lease expires. A cold
shutdown (SIGQUIT, or SIGKILL) takes the trainer down with it, and the job resumes elsewhere once
its lease expires.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from billiard.process import current_process
from billiard.util import set_pdeathsig
from sqlalchemy.orm import Session, sessionmaker

from api.checkpoints.archive import extract_archive
from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.core.storage import Storage, StorageUnavailable, storage_from_url
from api.jobs import lifecycle
from api.jobs.events import append_events
from api.jobs.models import Job
from api.pipelines.advance import unsent_jobs
from worker.attempt import Attempt, LostJob, claim, lock_owned_job
from worker.db import session_factory
from worker.heartbeat import Heartbeat
from worker.integrations import IntegrationUnavailable, Reporters
from worker.references import UnresolvedReference, build_spec, latest_resumable_checkpoint
from worker.relay import EventRelay, recorded_metric_steps

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
CANCEL_GRACE_SECONDS = 30.0
EXIT_AFTER_DONE_SECONDS = 60.0
STDERR_TAIL_LINES = 20
HANDBACK_GRACE_SECONDS = 10.0
"""How long a trainer asked to save and stop for a hand-back may take to exit before it is killed."""
SAVE_AND_STOP_SIGNAL = signal.SIGUSR1
"""Asks the trainer to save at its next step boundary and stop (trainer/signals.py)."""
SAVE_AND_STOP_RESEND_SECONDS = 2.0
"""The save-and-stop signal is sent again this often until the trainer exits: the trainer ignores it
until it has installed its handler (spawn_trainer), so one sent while it starts is not lost for good."""

HANDBACK_SIGNAL = signal.SIGUSR2
"""Sent by the worker's main process to its pool processes on a warm shutdown (worker/main.py)."""
HANDBACK = threading.Event()
"""Set in a pool process by HANDBACK_SIGNAL: give the running job back and take no other."""


def request_handback(signum: int = 0, frame: object = None) -> None:
    """The HANDBACK_SIGNAL handler of a pool process (installed by worker/main.py)."""
    HANDBACK.set()


def run_job(job_id: str, settings: Settings, send: Callable[[str], None] | None = None) -> None:
    """Run job `job_id` to a final status, unless another delivery already claimed it.

    `send` tells the broker a job is ready again (a hand-back on shutdown); without it a handed-back
    job is sent by a reaper (its `enqueued_at` is NULL)."""
    sessions = session_factory(settings)
    attempt = claim(sessions, job_id, worker_name(settings), settings)
    if attempt is None:
        logger.info("job %s is not queued any more; nothing to do", job_id)
        return
    logger.info("job %s: attempt %d on %s", job_id, attempt.number, attempt.worker_id)
    reporters = Reporters()
    try:
        storage = storage_from_url(settings.resolved_storage_url, settings)
        outcome = _run_attempt(attempt, sessions, storage, settings, reporters)
        if outcome in ("handed_back", "handed_back_saved"):
            _hand_back(sessions, attempt, send, saved=outcome == "handed_back_saved")
        elif send is not None:  # a pipeline stage's success queued the next stages: send them now
            with sessions() as session:
                lifecycle.enqueue(session, unsent_jobs(session, job_id), send)
    except LostJob as exc:
        logger.warning("job %s was taken away from this worker: %s", job_id, exc)
    except UnresolvedReference as exc:
        _fail(sessions, attempt, "invalid_reference", str(exc))
    except IntegrationUnavailable as exc:
        _fail(sessions, attempt, "integration_unavailable", str(exc))
    except StorageUnavailable as exc:  # not retried: the store needs an operator; checkpoints saved stay
        message = f"The artifact store failed while this job read or saved its files: {exc}"
        _fail(sessions, attempt, "storage_unavailable", message + " Resubmit the job once the store is back.")
    except Exception as exc:
        logger.exception("job %s: worker error", job_id)
        _fail(sessions, attempt, "worker_error", f"The worker failed while preparing or relaying this job: {exc}")
    finally:
        _finish_reporters(sessions, job_id, reporters)


def _finish_reporters(sessions: sessionmaker[Session], job_id: str, reporters: Reporters) -> None:
    """Close the job's tracker runs with its status (still running or queued: the attempt was cut short)."""
    if not reporters.reporters:
        return
    try:
        with sessions() as session:
            status = session.get_one(Job, job_id).status
    except Exception:
        logger.exception("job %s: could not read its status to close its tracker runs", job_id)
        status = "failed"
    reporters.finish(status)


def worker_name(settings: Settings) -> str:
    return settings.worker_id or f"{socket.gethostname()}:{os.getpid()}"


def _run_attempt(
    attempt: Attempt, sessions: sessionmaker[Session], storage: Storage, settings: Settings, reporters: Reporters
) -> str:
    # The heartbeat covers the preparation too: extracting a large checkpoint can outlast a lease.
    with Heartbeat(attempt, sessions, settings.heartbeat_seconds, settings.lease_seconds) as heartbeat:
        spec_file, resume, recorded = _prepare(attempt, sessions, storage, settings)
        if HANDBACK.is_set():  # shut down while preparing: no trainer to stop
            _remove_model_copies(attempt)
            return "handed_back"
        if heartbeat.pause_requested.is_set():  # paused while preparing: nothing trained, nothing to save
            _remove_model_copies(attempt)
            _pause(sessions, attempt, None)
            return "paused"
        with sessions() as session:  # experiment trackers: fail fast, before any training
            reporters.start(session.get_one(Job, attempt.job_id), settings)
        events_file = attempt.workdir / "events.jsonl"
        events_file.unlink(missing_ok=True)
        log_file = attempt.workdir / "trainer.log"
        batch = settings.event_batch_size
        relay = EventRelay(attempt, sessions, storage, events_file, batch, recorded, reporters=reporters)
        trainer = spawn_trainer(spec_file, attempt.workdir / "output", events_file, log_file, resume, settings)
        try:
            outcome = _supervise(trainer, relay, heartbeat)
        finally:
            stop_trainer(trainer)
            _remove_model_copies(attempt)
    if outcome == "cancelled":
        _conclude(sessions, attempt, "cancelled")
    elif outcome == "paused":
        _pause(sessions, attempt, relay.stopped_at)
    elif outcome == "crashed":
        _fail(sessions, attempt, "trainer_crashed", crash_message(trainer.returncode, log_file))
    return outcome


def _prepare(
    attempt: Attempt, sessions: sessionmaker[Session], storage: Storage, settings: Settings
) -> tuple[Path, Path | None, dict[str, int]]:
    """Write SPEC.json; on a retry extract the checkpoint to resume from. Returns (spec, resume, recorded steps)."""
    attempt.workdir.mkdir(parents=True, exist_ok=True)
    with sessions() as session:
        job = session.get_one(Job, attempt.job_id)
        spec = build_spec(session, job, settings, storage, attempt.workdir)
        resume_from = latest_resumable_checkpoint(session, job) if attempt.number > 1 else None
        resume = _extract_for_resume(resume_from, attempt, storage) if resume_from else None
        recorded = recorded_metric_steps(session, job.id)
    if attempt.number > 1:
        where = f"the checkpoint of step {resume_from.step}" if resume_from else "the start (no checkpoint yet)"
        _log_event(sessions, attempt, f"attempt {attempt.number}: resuming from {where}")
    spec_file = attempt.workdir / "SPEC.json"
    spec_file.write_text(spec.model_dump_json(indent=2))
    return spec_file, resume, recorded


def _remove_model_copies(attempt: Attempt) -> None:
    """Drop the attempt's checkpoint folders and dataset copies (all in the store); keep spec, events, log."""
    for name in ("output", "resume", "data"):
        shutil.rmtree(attempt.workdir / name, ignore_errors=True)


def _extract_for_resume(checkpoint: Checkpoint, attempt: Attempt, storage: Storage) -> Path:
    """The checkpoint a retry resumes from, extracted into the attempt folder (training_state included)."""
    target = attempt.workdir / "resume"
    if not target.is_dir():
        with storage.open(checkpoint.storage_key) as archive:
            extract_archive(archive, target)
    return target


def _log_event(sessions: sessionmaker[Session], attempt: Attempt, message: str) -> None:
    with sessions() as session, session.begin():
        job = lock_owned_job(session, attempt)
        append_events(session, job, [("log", {"level": "info", "message": message})])


def trainer_command(spec: Path, output: Path, events: Path, resume: Path | None, settings: Settings) -> list[str]:
    args = ["run", str(spec), "--output", str(output), "--events", str(events)]
    if resume is not None:
        args += ["--resume", str(resume)]
    if settings.gpus_per_job > 1:
        launch = ["-m", "accelerate.commands.launch", "--num_processes", str(settings.gpus_per_job)]
        return [sys.executable, *launch, "--module", "trainer", *args]
    return [sys.executable, "-m", "trainer", *args]


def spawn_trainer(
    spec: Path, output: Path, events: Path, log_file: Path, resume: Path | None, settings: Settings
) -> subprocess.Popen[bytes]:
    # The trainer inherits the worker's environment (PATH, HF caches, CUDA settings); nothing here is
    # configuration read from it: alignd's own settings reach the trainer only through SPEC.json.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if settings.worker_gpus:
        slot = getattr(current_process(), "index", 0) or 0
        first = slot * settings.gpus_per_job
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(first, first + settings.gpus_per_job))
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            trainer_command(spec, output, events, resume, settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def _die_with_parent() -> None:
    set_pdeathsig(signal.SIGKILL)
    # Ignored until the trainer installs its handler: a launcher (accelerate launch) that does not
    # know it survives it, and a save-and-stop sent while the trainer starts does not kill it.
    signal.signal(SAVE_AND_STOP_SIGNAL, signal.SIG_IGN)


def _supervise(trainer: subprocess.Popen[bytes], relay: EventRelay, heartbeat: Heartbeat) -> str:
    """Relay until the trainer exits; returns 'finished', 'cancelled', 'paused', 'crashed',
    'handed_back' or 'handed_back_saved' (the trainer saved at a step boundary first)."""
    done_at: float | None = None
    save_and_stop = SaveAndStop(trainer)
    handback_deadline: float | None = None
    while True:
        relay.pump()
        if heartbeat.lost.is_set():
            raise LostJob("the lease was lost (another worker took the job)")
        if relay.terminal:
            done_at = done_at or time.monotonic()
            if trainer.poll() is not None or time.monotonic() - done_at > EXIT_AFTER_DONE_SECONDS:
                return "finished"
        elif heartbeat.cancel_requested.is_set() or relay.cancel_requested:
            stop_trainer(trainer)
            relay.pump()
            return "finished" if relay.terminal else "cancelled"
        elif HANDBACK.is_set():  # warm shutdown: save at the step boundary if it comes in time, give the job back
            handback_deadline = handback_deadline or time.monotonic() + HANDBACK_GRACE_SECONDS
            save_and_stop.ask()
            if trainer.poll() is not None or time.monotonic() > handback_deadline:
                stop_trainer(trainer, HANDBACK_GRACE_SECONDS)
                relay.pump()
                if relay.terminal:
                    return "finished"
                return "handed_back_saved" if relay.stopped_at is not None else "handed_back"
        elif trainer.poll() is not None:
            relay.pump()
            if relay.terminal:
                return "finished"
            return "paused" if relay.stopped_at is not None else "crashed"
        elif heartbeat.pause_requested.is_set() or relay.pause_requested:
            save_and_stop.ask()  # the trainer saves at its next step boundary and exits (handled above)
        time.sleep(POLL_SECONDS)


class SaveAndStop:
    """Asks a trainer to save at its next step boundary and stop, again every SAVE_AND_STOP_RESEND_SECONDS."""

    def __init__(self, trainer: subprocess.Popen[bytes]) -> None:
        self.trainer = trainer
        self.sent_at: float | None = None

    def ask(self) -> None:
        now = time.monotonic()
        if self.sent_at is None or now - self.sent_at >= SAVE_AND_STOP_RESEND_SECONDS:
            _signal_group(self.trainer, SAVE_AND_STOP_SIGNAL)
            self.sent_at = now


def stop_trainer(trainer: subprocess.Popen[bytes], grace: float = CANCEL_GRACE_SECONDS) -> None:
    """SIGTERM the trainer's process group; SIGKILL it if it is still there after `grace` seconds."""
    if trainer.poll() is not None:
        return
    _signal_group(trainer, signal.SIGTERM)
    try:
        trainer.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(trainer, signal.SIGKILL)
        trainer.wait()


def _signal_group(trainer: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(trainer.pid, sig)


def crash_message(returncode: int | None, log_file: Path) -> str:
    """Why a trainer that reported no error stopped, in a sentence, then its last output lines."""
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        sentence = f"The trainer was killed by {name} without reporting an error"
        if name == "SIGKILL":
            sentence += " (often the machine running out of memory: try a smaller batch_size, max_length or LoRA)"
    else:
        sentence = f"The trainer stopped unexpectedly with exit code {returncode} without reporting an error"
    tail = _tail(log_file, STDERR_TAIL_LINES)
    return f"{sentence}. Last lines of its output:\n{tail}" if tail else f"{sentence}."


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return ""
    with open(path, "rb") as fh:
        fh.seek(max(0, path.stat().st_size - 16384))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def _conclude(sessions: sessionmaker[Session], attempt: Attempt, status: str) -> None:
    with sessions() as session, session.begin():
        lifecycle.transition(session, lock_owned_job(session, attempt), status)


def _pause(sessions: sessionmaker[Session], attempt: Attempt, step: int | None) -> None:
    """pausing -> paused: the trainer saved the checkpoint of `step` (uploaded by the relay) and stopped."""
    with sessions() as session, session.begin():
        lifecycle.paused(session, lock_owned_job(session, attempt), step)
    logger.info("job %s: paused at step %s", attempt.job_id, step)


def _hand_back(
    sessions: sessionmaker[Session], attempt: Attempt, send: Callable[[str], None] | None, *, saved: bool = False
) -> None:
    """Give the job back to the queue (warm shutdown) and send it, so another worker resumes it now.
    `saved`: the trainer saved at its step boundary first, so the attempt lost nothing and is given back."""
    with sessions() as session:
        with session.begin():
            job = lock_owned_job(session, attempt)
            status = lifecycle.hand_back(session, job, "the worker is shutting down", saved=saved)
        if status == "queued" and send is not None:
            lifecycle.enqueue(session, [attempt.job_id], send)
    logger.info("job %s: handed back on shutdown; now %s", attempt.job_id, status)


def _fail(sessions: sessionmaker[Session], attempt: Attempt, code: str, message: str) -> None:
    try:
        with sessions() as session, session.begin():
            lifecycle.fail(session, lock_owned_job(session, attempt), code, message)
    except LostJob:
        logger.warning("job %s: not marking failed, it is no longer ours", attempt.job_id)
