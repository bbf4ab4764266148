"""`client.pipelines`: create (idempotent), get, list, cancel, wait."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from client.errors import JobTimeoutError
from client.pagination import iterate_pages
from client.transport import Transport
from client.types import Pipeline


class Pipelines:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(
        self,
        *,
        stages: list[dict[str, Any]],
        name: str | None = None,
        metadata: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Pipeline:
        """Submit stages `[{"name": ..., "job": <a job request>}, ...]`; a stage's `base_model` may be
        `"stage:<name>"` (an earlier policy stage's output), a reward model component's `model` too
        (an earlier `reward` stage's output), and an evaluate stage's `models` entries (any earlier training
        stage's output). Retries are safe (an Idempotency-Key, a fresh uuid4 unless given)."""
        body: dict[str, Any] = {"stages": stages, "name": name, "metadata": metadata}
        return self.create_from({k: v for k, v in body.items() if v is not None}, idempotency_key=idempotency_key)

    def create_from(self, request: dict[str, Any], *, idempotency_key: str | None = None) -> Pipeline:
        """Submit a pipeline from a request body as DESIGN §4 describes it (e.g. read from a JSON/YAML file)."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        data = self._t.json("POST", "/v1/pipelines", json=request, headers=headers, idempotent=True)
        return Pipeline.model_validate(data)

    def get(self, pipeline_id: str) -> Pipeline:
        return Pipeline.model_validate(self._t.json("GET", f"/v1/pipelines/{pipeline_id}"))

    def list(self, *, status: str | None = None, page_size: int = 20) -> Iterator[Pipeline]:
        """Every pipeline (optionally of one status), newest first, paging as the iterator goes."""
        return iterate_pages(self._t, "/v1/pipelines", Pipeline, {"status": status, "limit": page_size})

    def cancel(self, pipeline_id: str) -> Pipeline:
        """Cancel (idempotent): the live stage is cancelled, the rest skipped; ConflictError once finished."""
        return Pipeline.model_validate(self._t.json("POST", f"/v1/pipelines/{pipeline_id}/cancel", idempotent=True))

    def wait(self, pipeline_id: str, *, timeout: float | None = None, poll_interval: float = 2.0) -> Pipeline:
        """Poll until the pipeline succeeded, failed or was cancelled (JobTimeoutError after `timeout` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pipeline = self.get(pipeline_id)
            if pipeline.is_final:
                return pipeline
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"pipeline {pipeline_id} is still {pipeline.status} after {timeout} s")
            left = poll_interval if deadline is None else deadline - time.monotonic()
            self._t.sleep(max(0.0, min(poll_interval, left)))
