"""Database sessions of a worker process, built from explicit Settings.

Keyed by process id as well as URL: Celery's prefork pool forks children from a parent that may
already hold pooled connections (the reaper's), and a connection must never cross a fork.
"""

from __future__ import annotations

import os
import threading

from sqlalchemy.orm import Session, sessionmaker

import api.core.models  # noqa: F401  (every mapper, so foreign keys between them resolve)
from api.core.db import WRITER, make_engine
from api.core.settings import Settings

_factories: dict[tuple[int, str], sessionmaker[Session]] = {}
_lock = threading.Lock()


def session_factory(settings: Settings) -> sessionmaker[Session]:
    key = (os.getpid(), settings.resolved_database_url)
    with _lock:
        if key not in _factories:
            # Worker sessions write (claims, heartbeats, events): on SQLite they take the write lock at
            # BEGIN, so the worker's and the API's event appends never interleave (api/core/db.py).
            engine = make_engine(key[1]).execution_options(**{WRITER: True})
            # `settings` in info: what the life cycle's pipeline hook checks a new stage's job with.
            _factories[key] = sessionmaker(engine, expire_on_commit=False, info={"settings": settings})
        return _factories[key]
