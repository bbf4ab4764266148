"""Pooled Postgres connections (api/core/db.py make_engine): a checkout costs no round trip (no
pool_pre_ping), and a connection the server hung up on is still replaced before a request uses it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from api.core.db import make_engine
from api.core.settings import Settings


def test_a_healthy_pooled_connection_is_checked_out_without_a_ping(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(settings.resolved_database_url)
    pings: list[Any] = []
    monkeypatch.setattr(engine.dialect, "do_ping", lambda conn: pings.append(conn) or True)
    try:
        pids = set()
        for _ in range(5):
            with engine.connect() as conn:
                pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
        assert len(pids) == 1  # the same pooled connection each time
        assert pings == []  # and no round trip before its query
    finally:
        engine.dispose()


def test_a_pooled_connection_the_server_terminated_is_replaced_before_a_query_uses_it(settings: Settings) -> None:
    engine = make_engine(settings.resolved_database_url)
    admin = create_engine(settings.resolved_database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            first = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.connect() as other:
            assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
        time.sleep(0.2)  # the backend's goodbye reaches the idle pooled socket

        with engine.connect() as conn:  # no error: the dead connection was dropped at checkout
            second = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        assert second != first
    finally:
        engine.dispose()
        admin.dispose()
