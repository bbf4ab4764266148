"""Relaying the trainer's JSON-lines events into the database (DESIGN §7 events, §5 life cycle).

The relay tails the events file the trainer appends to, and applies what it finds in batches of
`event_batch_size`, one transaction per batch, with the job row locked (api.jobs.events hands out
the seqs). Every transaction first checks that this attempt still owns the job (worker/attempt.py);
if the reaper gave the job to someone else the relay raises `LostJob` and writes nothing. `done`
and `error` end the job through the life cycle (api/jobs/lifecycle.py).

- progress   -> job.progress (step, total_steps, epoch, eta_seconds); not an event.
- metrics    -> a `metrics` event, job.metrics (latest value of each name), job.progress.step; an
                evaluate job's metrics name their `model`, kept in the event and in job.results[model].
- checkpoint -> the folder is archived into the artifact store (sha256), a Checkpoint row is added
                (once per job/step/kind: a replayed checkpoint is not archived again) and a
                `checkpoint` event records it.
- log/sample -> `log` / `sample` events.
- done       -> succeeded, output_checkpoint_id = the final checkpoint.
- stopped    -> noted (`stopped_at`): the trainer saved at a step boundary on request and stopped
                (trainer/signals.py); the runner then pauses the job or hands it back.
- error      -> failed with the trainer's error code and message.

Each batch also updates the job's telemetry for /metrics (last_step_at, steps_per_second,
relay_lag_seconds; see `_telemetry`), and once it is committed its metrics and checkpoints go to
the job's experiment trackers (worker/integrations.py).

No duplicates after a resume: a resumed attempt restarts from its checkpoint's step, so it emits
again the metrics of the steps the dead attempt recorded after that checkpoint. For each metric name
the relay keeps the highest step already recorded for the job (read from the database when the
attempt starts) and drops values at or below it; an event left with no values is dropped. Within
one attempt steps only grow, so exactly the replayed values go. `sample` events (online methods
emit a few per step) are deduplicated the same way, by (step, index): the index of a sample is its
position among the samples of its step in this attempt, and a resumed attempt drops the samples of
a step whose index is below the number already recorded for that step.

Riding through a database restart: a batch whose transaction fails with a connection error
(`OperationalError`: Postgres restarted, failed over, or a network blip) is applied again, with
backoff, for up to `DB_RETRY_SECONDS`. Nothing of it was committed, and the relay's own
bookkeeping is rolled back with it, so no event is lost or doubled. Past that the error goes up
and the runner ends the attempt (the lease then expires and the job resumes elsewhere).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from api.checkpoints.archive import archive_folder
from api.checkpoints.models import Checkpoint
from api.core.db import utcnow
from api.core.storage import Storage, Stored
from api.jobs import lifecycle
from api.jobs.events import append_events
from api.jobs.models import Job, JobEvent
from worker.attempt import Attempt, lock_owned_job
from worker.integrations import Reporters

logger = logging.getLogger(__name__)

DB_RETRY_SECONDS = 60.0
"""How long a batch is retried while the database is unreachable (see the module docstring)."""


def recorded_metric_steps(session: Session, job_id: str) -> dict[str, int]:
    """Highest step recorded so far for each metric name of a job."""
    highest: dict[str, int] = {}
    rows = session.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "metrics"))
    for data in rows:
        for name in data.get("values", {}):
            highest[name] = max(highest.get(name, -1), int(data["step"]))
    return highest


def recorded_sample_counts(session: Session, job_id: str) -> dict[int, int]:
    """step -> how many `sample` events of that step are recorded for a job."""
    step = JobEvent.data["step"].as_integer()
    rows = session.execute(
        select(step, func.count())
        .where(JobEvent.job_id == job_id, JobEvent.type == "sample", step.is_not(None))
        .group_by(step)
    )
    return {int(s): int(n) for s, n in rows}


@dataclass
class EventRelay:
    attempt: Attempt
    sessions: sessionmaker[Session]
    storage: Storage
    events_file: Path
    batch_size: int
    recorded_steps: dict[str, int] = field(default_factory=dict)
    terminal: str | None = None
    """'done' or 'error' once the trainer said so (the job row is final then)."""
    cancel_requested: bool = False
    """Seen status 'cancelling' while relaying."""
    pause_requested: bool = False
    """Seen status 'pausing' while relaying."""
    stopped_at: int | None = None
    """The step the trainer saved and stopped at on request (its `stopped` event), once it did."""
    reporters: Reporters = field(default_factory=Reporters)
    """Experiment trackers fed with what each batch committed (worker/integrations.py)."""
    _offset: int = 0
    _partial: bytes = b""
    _written_at: float = 0.0
    _rate_from: tuple[int, float] | None = None
    _to_report: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    _recorded_samples: dict[int, int] | None = None
    """step -> samples of that step already recorded for the job (read at this attempt's first sample)."""
    _sample_index: dict[int, int] = field(default_factory=dict)
    """step -> samples of that step seen in this attempt so far."""

    def pump(self) -> None:
        """Apply every complete line the trainer has written since the last call."""
        lines = self._read_new_lines()
        for start in range(0, len(lines), self.batch_size):
            self._apply_retrying([e for e in map(_parse, lines[start : start + self.batch_size]) if e is not None])

    def _apply_retrying(self, events: list[dict[str, Any]]) -> None:
        """Apply one batch; while the database is unreachable, roll back and try again with backoff."""
        deadline, delay = time.monotonic() + DB_RETRY_SECONDS, 0.25
        while True:
            state = self._bookkeeping()
            try:
                return self._apply_batch(events)
            except OperationalError:
                self._restore(state)  # the transaction rolled back: so does what the relay remembered
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("job %s: database unreachable; retrying the batch in %.2fs", self.attempt.job_id, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _bookkeeping(self) -> tuple[Any, ...]:
        samples = None if self._recorded_samples is None else dict(self._recorded_samples)
        return (
            dict(self.recorded_steps),
            samples,
            dict(self._sample_index),
            self.terminal,
            self.cancel_requested,
            self.pause_requested,
            self.stopped_at,
        )

    def _restore(self, state: tuple[Any, ...]) -> None:
        steps, self._recorded_samples, self._sample_index, self.terminal, *flags = state
        self.cancel_requested, self.pause_requested, self.stopped_at = flags
        self.recorded_steps = steps

    def _read_new_lines(self) -> list[bytes]:
        if not self.events_file.exists():
            return []
        self._written_at = os.stat(self.events_file).st_mtime  # the trainer's last write, at most
        with open(self.events_file, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        return [line for line in lines if line.strip()]

    def _apply_batch(self, events: list[dict[str, Any]]) -> None:
        if not events or self.terminal:
            return
        archives = {id(e): self._archive(e) for e in events if e["type"] == "checkpoint"}
        self._to_report = []
        with self.sessions() as session, session.begin():
            job = lock_owned_job(session, self.attempt)
            step_before = int((job.progress or {}).get("step") or 0)
            for event in events:
                handler = _HANDLERS.get(event["type"])
                if handler is None:
                    logger.warning("job %s: ignoring trainer event of type %r", job.id, event["type"])
                    continue
                handler(self, session, job, event, archives.get(id(event)))
                if self.terminal:
                    break
            if job.status == "cancelling":
                self.cancel_requested = True
            elif job.status == "pausing":
                self.pause_requested = True
            self._telemetry(job, events, step_before)
        for method, args in self._to_report:  # committed: now the trackers may see it
            getattr(self.reporters, method)(*args)

    def _telemetry(self, job: Job, events: list[dict[str, Any]], step_before: int) -> None:
        """The job row's numbers for /metrics: relay lag of this batch, last step time, step rate.

        Lag: from the newest event's own `time` (unix seconds) when the trainer stamps one, else from
        the events file's modification time read before this batch was read (the trainer's last write).
        Step rate: steps over the time between step advances the relay saw at least a second apart
        (batches come every POLL_SECONDS, so one batch alone says nothing about speed)."""
        stamped = [e["time"] for e in events if isinstance(e.get("time"), int | float)]
        written = max(stamped) if stamped else self._written_at
        job.relay_lag_seconds = max(0.0, time.time() - written) if written else None
        step = int((job.progress or {}).get("step") or 0)
        if step <= step_before:
            return
        job.last_step_at = utcnow()
        now = time.monotonic()
        if self._rate_from is None:
            self._rate_from = (step, now)
            return
        first_step, since = self._rate_from
        if now - since >= 1.0:
            job.steps_per_second = (step - first_step) / (now - since)
            self._rate_from = (step, now)

    def _archive(self, event: dict[str, Any]) -> Stored | None:
        """Archive a checkpoint folder into the store, unless this step is registered already."""
        step, kind = int(event["step"]), event.get("kind", "intermediate")
        with self.sessions() as session:
            if _checkpoint(session, self.attempt.job_id, step, kind) is not None:
                return None
        key = f"checkpoints/{self.attempt.job_id}/step-{step:08d}-{kind}.tar"
        tmp = self.attempt.workdir / f".{uuid.uuid4().hex}.tar"
        sha256 = archive_folder(Path(event["path"]), tmp)
        return self.storage.adopt(key, tmp, sha256)

    # One handler per event type; each gets the locked job row.

    def _on_progress(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        keys = ("step", "total_steps", "epoch", "eta_seconds")
        job.progress = {**(job.progress or {}), **{k: event[k] for k in keys if k in event}}

    def _on_metrics(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        step = int(event["step"])
        values = {k: v for k, v in event.get("values", {}).items() if step > self.recorded_steps.get(k, -1)}
        if not values:
            return
        for name in values:
            self.recorded_steps[name] = step
        data: dict[str, Any] = {"step": step, "values": values}
        if isinstance(event.get("model"), str):  # an evaluate job's metrics of one model: its results too
            data["model"] = event["model"]
            job.results = {
                **(job.results or {}),
                event["model"]: {**(job.results or {}).get(event["model"], {}), **values},
            }
        append_events(session, job, [("metrics", data)])
        self._to_report.append(("metrics", (step, values)))
        job.metrics = {**(job.metrics or {}), **values}
        progress = job.progress or {}
        job.progress = {**progress, "step": max(step, int(progress.get("step") or 0))}

    def _on_checkpoint(self, session: Session, job: Job, event: dict[str, Any], stored: Stored | None) -> None:
        if stored is None:  # replayed by a resumed attempt: registered already
            return
        checkpoint = Checkpoint(
            tenant_id=job.tenant_id,
            job_id=job.id,
            step=int(event["step"]),
            kind=event.get("kind", "intermediate"),
            bytes=stored.bytes,
            sha256=stored.sha256,
            storage_key=stored.key,
            metrics=event.get("metrics"),
        )
        session.add(checkpoint)
        session.flush()
        data = {"checkpoint_id": checkpoint.id, "step": checkpoint.step, "kind": checkpoint.kind}
        data = {**data, "bytes": stored.bytes, "sha256": stored.sha256}
        append_events(session, job, [("checkpoint", data)])
        self._to_report.append(("checkpoint", (checkpoint.step, checkpoint.kind, data)))

    def _on_log(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        append_events(session, job, [("log", {"level": event.get("level", "info"), "message": event.get("message")})])

    def _on_sample(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        step = event.get("step")
        if isinstance(step, int):  # dedupe by (step, index), see the module docstring
            if self._recorded_samples is None:
                self._recorded_samples = recorded_sample_counts(session, job.id)
            index = self._sample_index.get(step, 0)
            self._sample_index[step] = index + 1
            if index < self._recorded_samples.get(step, 0):
                return  # replayed by a resumed attempt: recorded already
        append_events(session, job, [("sample", {k: v for k, v in event.items() if k != "type"})])

    def _on_done(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        self.terminal = "done"
        if job.status == "cancelling":  # finished before it could be stopped; keep the life cycle
            lifecycle.transition(session, job, "cancelled")
            return
        final = _checkpoint(session, job.id, None, "final")
        job.output_checkpoint_id = final.id if final else None
        lifecycle.transition(session, job, "succeeded")

    def _on_stopped(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        self.stopped_at = int(event["step"])

    def _on_error(self, session: Session, job: Job, event: dict[str, Any], _: Stored | None) -> None:
        self.terminal = "error"
        code = str(event.get("code") or "training_error")
        message = str(event.get("message") or "the trainer reported an error without a message")
        lifecycle.fail(session, job, code, message)


_Handler = Callable[[EventRelay, Session, Job, dict[str, Any], Stored | None], None]
_HANDLERS: dict[str, _Handler] = {
    "progress": EventRelay._on_progress,
    "metrics": EventRelay._on_metrics,
    "checkpoint": EventRelay._on_checkpoint,
    "log": EventRelay._on_log,
    "sample": EventRelay._on_sample,
    "done": EventRelay._on_done,
    "stopped": EventRelay._on_stopped,
    "error": EventRelay._on_error,
}


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = _storable(json.loads(line))
    except ValueError:
        return {"type": "log", "level": "warning", "message": f"unreadable trainer event: {line[:200]!r}"}
    return event if isinstance(event, dict) and "type" in event else None


def _storable(value: Any) -> Any:
    """An event as Postgres can store it: NUL characters become U+FFFD and NaN/Infinity become null.

    jsonb (and text) refuse both, and one such value (a sampled completion holding a NUL, a metric or
    reward that came out NaN) would otherwise fail the whole batch of events with it."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def _checkpoint(session: Session, job_id: str, step: int | None, kind: str) -> Checkpoint | None:
    query = select(Checkpoint).where(Checkpoint.job_id == job_id, Checkpoint.kind == kind)
    if step is not None:
        query = query.where(Checkpoint.step == step)
    return session.scalars(query.order_by(Checkpoint.step.desc()).limit(1)).first()
