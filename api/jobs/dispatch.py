"""Sending new jobs to the broker after the response: one dispatcher thread per API process.

A submission commits its job and returns; the id goes to this process's dispatcher, whose thread
sends it to the broker and marks it sent through the job life cycle's `enqueue_all`
(api/jobs/lifecycle.py). The request no longer waits for the Celery send (a Redis round trip) nor
the "sent" UPDATE (a Postgres round trip), and the thread gathers the ids that arrive within
LINGER_SECONDS of each other: their messages go to Redis in one pipeline and one UPDATE marks them
all sent (per job, 40% of the send's CPU and a tenth of the UPDATE's at 10 ids a batch).

Nothing is weaker than sending on the request: the job is committed before its id reaches the
dispatcher (enqueue-after-commit), and an id that is never sent (the broker is down, the send
fails, the process dies with ids still waiting here) leaves its job queued with `enqueued_at` NULL,
which a worker's reaper sends again (worker/reaper.py `resend_unsent`, once the job is
UNSENT_GRACE_SECONDS old). The thread starts with the first id a process hands it (so a forked
process starts its own) and is waited for, briefly, at exit and by `reset_caches`.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence

from api.core.broker import send_jobs
from api.core.db import get_sessionmaker
from api.jobs import lifecycle

log = logging.getLogger("alignd.jobs")

MAX_BATCH = 200
"""Ids sent (and marked sent in one UPDATE) per round of the dispatcher's thread at most."""
LINGER_SECONDS = 0.05
"""How long the thread waits, after an id arrives, for more to send with it (a job's start is that much later)."""


class Dispatcher:
    """Hands batches of committed job ids to `enqueue_batch` (send each, mark them sent) on a thread of
    its own. `put` never blocks on the broker or the database."""

    def __init__(
        self,
        enqueue_batch: Callable[[Sequence[str]], object],
        max_batch: int = MAX_BATCH,
        linger: float = LINGER_SECONDS,
    ) -> None:
        self._enqueue_batch = enqueue_batch
        self._max_batch = max_batch
        self._linger = linger
        self._ids: deque[str] = deque()
        self._unfinished = 0
        self._flushing = 0
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def put(self, job_id: str) -> None:
        """Send the committed job `job_id` soon (its commit must be done)."""
        with self._changed:
            self._ids.append(job_id)
            self._unfinished += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="alignd-dispatcher", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every id put so far was handled (sent, or left for the reaper); False on timeout."""
        with self._changed:
            self._flushing += 1  # no lingering while someone waits
            self._changed.notify_all()
            try:
                return self._changed.wait_for(lambda: self._unfinished == 0, timeout)
            finally:
                self._flushing -= 1

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._ids))
                self._changed.wait_for(lambda: len(self._ids) >= self._max_batch or self._flushing > 0, self._linger)
                batch = [self._ids.popleft() for _ in range(min(len(self._ids), self._max_batch))]
            try:
                self._enqueue_batch(batch)
            except Exception:  # the database is down: the reaper sends whatever was not marked sent
                log.exception("could not send jobs %s; they stay queued and are sent again later", batch)
            finally:
                with self._changed:
                    self._unfinished -= len(batch)
                    self._changed.notify_all()


def _enqueue_batch(job_ids: Sequence[str]) -> None:
    with get_sessionmaker()() as session:
        lifecycle.enqueue_all(session, job_ids, send_jobs)


_dispatcher: tuple[int, Dispatcher] | None = None
_lock = threading.Lock()


def dispatcher() -> Dispatcher:
    """This process's dispatcher."""
    global _dispatcher
    with _lock:
        if _dispatcher is None or _dispatcher[0] != os.getpid():
            _dispatcher = (os.getpid(), Dispatcher(lambda ids: _enqueue_batch(ids)))
        return _dispatcher[1]


def send_after_commit(job_id: str) -> None:
    """Send the committed job `job_id` to the broker from this process's dispatcher thread. Never raises:
    the job is committed, and a 5xx would only invite a duplicate submission (the reaper sends it)."""
    try:
        dispatcher().put(job_id)
    except Exception:  # e.g. no thread could be started
        log.exception("could not hand job %s to the dispatcher; it stays queued and is sent again later", job_id)


def flush(timeout: float | None = 10.0) -> bool:
    """Wait for this process's dispatcher to hand every job id it holds to the broker (or give up on it)."""
    current = _dispatcher
    if current is None or current[0] != os.getpid():
        return True
    return current[1].flush(timeout)


atexit.register(flush, 2.0)
