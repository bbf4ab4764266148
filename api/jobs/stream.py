"""Server-Sent Events of a job's events, resumable with Last-Event-ID.

The events table is the log: a stream reads it for seq > last sent (with a short-lived session per
read, so an open stream holds no connection) and ends once the job reached a final status and every
event up to it was sent. Each SSE message has `id: seq`, `event: type` and the event as JSON in
`data`; a client that reconnects with Last-Event-ID gets exactly what it missed.

Between reads a stream waits on its process's `JobWatcher`: one task that, every POLL_SECONDS, reads
the newest seq and the status of every job some stream waits on in one query, and wakes the streams
whose job has something new. So N open streams cost one query per tick, not N reads of their events
(50 streams polling on their own were 100 thread trips and 200 queries a second, most finding nothing).
A job's `last_event_seq` is written in the transaction that inserts its events, so a stream woken
for seq > n finds those events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from weakref import WeakKeyDictionary

import anyio
import orjson
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.core.db import get_reader_sessionmaker
from api.jobs import service
from api.jobs.models import FINAL_STATUSES, Job
from api.jobs.schemas import EventPublic

log = logging.getLogger("alignd.api")

POLL_SECONDS = 0.5
BATCH = 500
IDS_PER_QUERY = 500


def _poll(job_id: str, after: int) -> tuple[list[dict[str, Any]], bool]:
    with get_reader_sessionmaker()() as session:
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


async def event_stream(job_id: str, after: int) -> AsyncIterator[dict[str, Any]]:
    while True:
        events, done = await run_in_threadpool(_poll, job_id, after)
        for event in events:
            after = event["seq"]
            yield {"id": str(event["seq"]), "event": event["type"], "data": _json(event)}
        if done:
            return
        if len(events) < BATCH:  # a full batch may have more behind it: read again at once
            await JobWatcher.of_this_loop().changed(job_id, after)


def _json(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def _job_states(job_ids: list[str]) -> dict[str, tuple[int, bool]]:
    """job id -> (its newest event seq, whether it is final); a job that is gone is left out."""
    with get_reader_sessionmaker()() as session:
        rows = session.execute(select(Job.id, Job.last_event_seq, Job.status).where(Job.id.in_(job_ids))).all()
    return {job_id: (seq, status in FINAL_STATUSES) for job_id, seq, status in rows}


class JobWatcher:
    """Wakes the streams of one event loop (one API process) when their job has events after theirs."""

    def __init__(self) -> None:
        self.waiting: dict[str, list[tuple[int, asyncio.Event]]] = {}
        """job id -> (the seq a stream has sent up to, the event that wakes it) per waiting stream."""
        self.task: asyncio.Task[None] | None = None

    @staticmethod
    def of_this_loop() -> JobWatcher:
        loop = asyncio.get_running_loop()
        watcher = _watchers.get(loop)
        if watcher is None:
            watcher = _watchers[loop] = JobWatcher()
        return watcher

    async def changed(self, job_id: str, after: int) -> None:
        """Return once job `job_id` has an event with seq > `after`, is final, or is gone (checked every
        POLL_SECONDS; level-triggered, so an event written just before the call is not missed)."""
        waiter = (after, asyncio.Event())
        self.waiting.setdefault(job_id, []).append(waiter)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._watch())
        try:
            await waiter[1].wait()
        finally:
            waiters = self.waiting.get(job_id, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self.waiting.pop(job_id, None)

    async def _watch(self) -> None:
        while self.waiting:
            await anyio.sleep(POLL_SECONDS)
            job_ids = list(self.waiting)
            states: dict[str, tuple[int, bool]] = {}
            try:
                for i in range(0, len(job_ids), IDS_PER_QUERY):
                    states.update(await run_in_threadpool(_job_states, job_ids[i : i + IDS_PER_QUERY]))
            except Exception:  # the database is away (a restart): the streams wait for the next tick
                log.warning("reading the state of streamed jobs failed; retrying", exc_info=True)
                continue
            for job_id in job_ids:
                seq, final = states.get(job_id, (0, True))
                for after, woken in self.waiting.get(job_id, []):
                    if final or seq > after:
                        woken.set()


_watchers: WeakKeyDictionary[asyncio.AbstractEventLoop, JobWatcher] = WeakKeyDictionary()
