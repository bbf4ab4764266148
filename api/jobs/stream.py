"""Server-Sent Events of a job's events, resumable with Last-Event-ID.

The events table is the log: the stream polls it for seq > last sent (with a short-lived session
per poll, so an open stream holds no connection) and ends once the job reached a final status
and every event up to it was sent. Each SSE message has `id: seq`, `event: type` and the event
as JSON in `data`; a client that reconnects with Last-Event-ID gets exactly what it missed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
from starlette.concurrency import run_in_threadpool

from api.core.db import get_sessionmaker
from api.jobs import service
from api.jobs.models import Job
from api.jobs.schemas import EventPublic

POLL_SECONDS = 0.5
BATCH = 500


def _poll(job_id: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    with get_sessionmaker()() as session:
        job = session.get(Job, job_id)
        if job is None:
            return [], True
        final = service.is_final(job.status)
        last_seq = job.last_event_seq
        events, _ = service.list_events(session, job, after=after, limit=BATCH)
        payload = [EventPublic.model_validate(e, from_attributes=True).model_dump(mode="json") for e in events]
        # Done once the job is final and the last event handed out has been sent.
        done = final and (payload[-1]["seq"] if payload else after) >= last_seq
        return payload, done


async def event_stream(job_id: str, after: int, poll_seconds: float = POLL_SECONDS) -> AsyncIterator[dict[str, Any]]:
    while True:
        events, done = await run_in_threadpool(_poll, job_id, after)
        for event in events:
            after = event["seq"]
            yield {"id": str(event["seq"]), "event": event["type"], "data": _json(event)}
        if done:
            return
        if not events:
            await anyio.sleep(poll_seconds)


def _json(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()
