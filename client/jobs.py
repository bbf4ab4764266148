"""`client.jobs`: create (idempotent), get, list, cancel, events, stream_events (SSE, resumed), metrics, wait."""

from __future__ import annotations

import builtins
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from httpx_sse import EventSource

from client.errors import APIConnectionError, InternalServerError, JobTimeoutError
from client.pagination import iterate_pages
from client.transport import Transport
from client.types import FINAL_STATUSES, Checkpoint, Event, Job, Metrics

STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)
"""The server pings an open stream every 15 s; a minute without a byte means the connection is gone."""


class Jobs:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        *,
        algorithm: str,
        base_model: str,
        dataset_id: str,
        models: builtins.list[str] | None = None,
        eval_dataset_id: str | None = None,
        reward_model_id: str | None = None,
        reward: list[dict[str, Any]] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        lora: dict[str, Any] | None = None,
        seed: int | None = None,
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        """Submit a job. An Idempotency-Key (a fresh uuid4 unless given) makes the retries safe: the
        server answers a repeated key with the job the first request created.

        `algorithm="evaluate"` scores `base_model` and the candidate `models` (MODEL_REFs) on the dataset
        and trains nothing; `job.results` then maps each model to its metrics."""
        body = {
            "algorithm": algorithm,
            "base_model": base_model,
            "models": models,
            "dataset_id": dataset_id,
            "eval_dataset_id": eval_dataset_id,
            "reward_model_id": reward_model_id,
            "reward": reward,
            "hyperparameters": hyperparameters,
            "lora": lora,
            "seed": seed,
            "name": name,
            "metadata": metadata,
        }
        return self.create_from({k: v for k, v in body.items() if v is not None}, idempotency_key=idempotency_key)

    def create_from(self, request: dict[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job from a request body as DESIGN §4 describes it (e.g. read from a JSON/YAML file)."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        return Job.model_validate(self._t.json("POST", "/v1/jobs", json=request, headers=headers, idempotent=True))

    def get(self, job_id: str) -> Job:
        return Job.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}"))

    def list(self, *, status: str | None = None, algorithm: str | None = None, page_size: int = 20) -> Iterator[Job]:
        """Every job (optionally of one status / algorithm), newest first, paging as the iterator goes."""
        params = {"status": status, "algorithm": algorithm, "limit": page_size}
        return iterate_pages(self._t, "/v1/jobs", Job, params)

    def cancel(self, job_id: str) -> Job:
        """Cancel (idempotent): queued -> cancelled, running -> cancelling; ConflictError once finished."""
        return Job.model_validate(self._t.json("POST", f"/v1/jobs/{job_id}/cancel", idempotent=True))

    def pause(self, job_id: str) -> Job:
        """Pause (idempotent): queued -> paused, running -> pausing -> paused (saved at the next step
        boundary, the worker freed); ConflictError (job_not_pausable) once cancelling or finished."""
        return Job.model_validate(self._t.json("POST", f"/v1/jobs/{job_id}/pause", idempotent=True))

    def resume(self, job_id: str) -> Job:
        """Resume (idempotent): paused -> queued, continuing from its latest checkpoint on any worker;
        ConflictError (job_not_resumable) while it is still pausing, or once cancelling or finished."""
        return Job.model_validate(self._t.json("POST", f"/v1/jobs/{job_id}/resume", idempotent=True))

    def events(self, job_id: str, *, after: int = 0, page_size: int = 500) -> Iterator[Event]:
        """The events recorded so far with seq > `after`, in order (paged by seq)."""
        while True:
            params = {"after": after, "limit": page_size}
            page = self._t.json("GET", f"/v1/jobs/{job_id}/events", params=params)
            for row in page["data"]:
                event = Event.model_validate(row)
                after = event.seq
                yield event
            if not page["has_more"] or not page["data"]:
                return

    def stream_events(self, job_id: str, *, after: int = 0, max_reconnects: int | None = None) -> Iterator[Event]:
        """The job's events live (SSE) until it is final and every event was seen.

        A dropped connection (or a 5xx) is resumed with `Last-Event-ID: <last seq seen>`, so the
        iterator yields every event once, in order, with no gap. `max_reconnects` consecutive
        failures without a new event (default: the retry policy's attempts) raise APIConnectionError.
        """
        limit = self._t.retry.max_attempts if max_reconnects is None else max_reconnects
        last, failures = after, 0
        while True:
            final_seen, progressed = False, False
            try:
                headers = {"Last-Event-ID": str(last)} if last else {}
                path = f"/v1/jobs/{job_id}/events/stream"
                with self._t.stream("GET", path, headers=headers, timeout=STREAM_TIMEOUT) as r:
                    for message in EventSource(r).iter_sse():
                        if not message.id or not message.data:
                            continue  # pings and comments
                        event = Event.model_validate_json(message.data)
                        if event.seq <= last:
                            continue
                        last, failures, progressed = event.seq, 0, True
                        final_seen = event.type == "status" and event.data.get("status") in FINAL_STATUSES
                        yield event
                # The server ends the stream once the job is final and every event was sent; any
                # other end (a proxy, a restart) is resumed like a dropped connection.
                if final_seen or (self.get(job_id).is_final and not any(self.events(job_id, after=last))):
                    return
                if progressed:
                    continue
                failure: Exception = APIConnectionError(f"the event stream of job {job_id} ended early")
            except (APIConnectionError, InternalServerError) as exc:
                failure = exc
            failures += 1
            if failures > limit:
                raise failure
            self._t.sleep(self._t.retry.backoff(failures))

    def metrics(self, job_id: str) -> Metrics:
        """Every metric's series: `{name: [(step, value), ...]}`."""
        return Metrics.model_validate(self._t.json("GET", f"/v1/jobs/{job_id}/metrics"))

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The job's checkpoints (intermediate and final), as `client.checkpoints.list(job_id)`."""
        page = self._t.json("GET", f"/v1/jobs/{job_id}/checkpoints")
        return [Checkpoint.model_validate(row) for row in page["data"]]

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Job:
        """Poll until the job is succeeded, failed or cancelled; returns it (JobTimeoutError after `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.is_final:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
            left = poll_interval if deadline is None else deadline - time.monotonic()
            self._t.sleep(max(0.0, min(poll_interval, left)))
