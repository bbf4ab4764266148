"""The lease heartbeat of a running attempt: a small thread beside the relay loop.

Every `heartbeat_seconds` it pushes the job's lease `lease_seconds` into the future, if the attempt
still owns the job. It only observes: it sets `cancel_requested` when the API moved the job to
`cancelling`, `pause_requested` when it moved it to `pausing`, and `lost` when the job was taken away;
the runner's loop acts on them (one place owns the trainer process).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from api.core.db import utcnow
from worker.attempt import Attempt, LostJob, lock_owned_job

logger = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, attempt: Attempt, sessions: sessionmaker[Session], interval: float, lease_seconds: int) -> None:
        self.attempt = attempt
        self.sessions = sessions
        self.interval = interval
        self.lease = timedelta(seconds=lease_seconds)
        self.cancel_requested = threading.Event()
        self.pause_requested = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{attempt.job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def beat(self) -> None:
        """Renew the lease once (and notice cancel requests and lost ownership)."""
        try:
            with self.sessions() as session, session.begin():
                job = lock_owned_job(session, self.attempt)
                job.lease_expires_at = utcnow() + self.lease
                if job.status == "cancelling":
                    self.cancel_requested.set()
                elif job.status == "pausing":
                    self.pause_requested.set()
        except LostJob:
            self.lost.set()
        except Exception:
            # A database hiccup: try again next beat. If it lasts longer than the lease, the reaper
            # hands the job to another worker and the next beat finds it lost.
            logger.exception("heartbeat of job %s failed", self.attempt.job_id)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()
