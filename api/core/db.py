"""Engine, sessions and the declarative base. The schema itself belongs to migrations/."""

from __future__ import annotations

import select
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar

from sqlalchemy import JSON, DateTime, Engine, TypeDecorator, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from api.core.settings import get_settings

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones; we re-attach UTC).

    A TypeDecorator rather than a DateTime subclass: SQLite's dialect swaps a DateTime subclass for
    its own DATETIME type, so an overridden result_processor never ran there and SQLite rows came
    back naive. Values are stored as UTC (an aware datetime in another zone is converted first).
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSONType,
        list[Any]: JSONType,
        datetime: UTCDateTime(),
    }


WRITER = "alignd_writer"
"""Execution option of an engine whose transactions write (SQLite: they BEGIN IMMEDIATE; see make_engine)."""


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn: Any, _record: Any) -> None:
            # WAL lets other connections read while one writes.
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
            conn.isolation_level = None  # pysqlite emits no BEGIN of its own; _begin does

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # SQLAlchemy's pysqlite recipe ("Serializable isolation / Savepoints / Transactional DDL").
            # SELECT ... FOR UPDATE is a no-op on SQLite, so two processes appending events to one job
            # (the API's cancel, the worker's relay) would both read last_event_seq: the same seq twice,
            # or "database is locked" when the stale snapshot tries to write. A writer's transaction
            # begins IMMEDIATE, taking the write lock before its first read, so writers run one after
            # another (each waits up to busy_timeout). Readers stay DEFERRED: under WAL they never wait,
            # and a reader holding a transaction open does not stop writers.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITER) else "BEGIN")

        return engine
    engine = create_engine(url, pool_size=10, max_overflow=20)
    # Instead of pool_pre_ping (a round trip before every checkout: a job GET's only query doubled), a
    # connection is checked without one: a server that restarted, or a backend that was terminated, has
    # sent its goodbye (an error message, then end of file), so the idle socket is readable. A readable or
    # broken connection is invalidated and the pool opens a new one in its place before handing it out.
    # An idle, healthy connection has nothing to read (a stray NOTICE only costs a reconnect).
    event.listen(engine, "checkout", _drop_if_closed_by_server)
    return engine


def _drop_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout hook: raise DisconnectionError (the pool retries) when the server has hung up."""
    if getattr(dbapi_connection, "broken", False) or dbapi_connection.closed:
        raise DisconnectionError("the connection was closed")
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        readable = poller.poll(0)
    except Exception as exc:  # the driver's own error (psycopg's OperationalError) or the OS's
        raise DisconnectionError("the connection's socket is gone") from exc
    if readable:
        raise DisconnectionError("the server sent something to an idle connection (it hung up)")


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    """Sessions for reading (they may write too, but on SQLite without the write lock held from the start)."""
    return sessionmaker(get_engine(), expire_on_commit=False)


@lru_cache
def get_writer_sessionmaker() -> sessionmaker[Session]:
    """Sessions whose transactions write: on SQLite each takes the write lock when it begins."""
    return sessionmaker(get_engine().execution_options(**{WRITER: True}), expire_on_commit=False)


@lru_cache
def get_reader_sessionmaker() -> sessionmaker[Session]:
    """Sessions of requests that only read (the API's GETs, its event streams). On Postgres each statement
    commits on its own (autocommit): a read costs its queries alone, not a BEGIN and a ROLLBACK round trip
    around them, and under READ COMMITTED each statement had its own snapshot inside a transaction too.
    On SQLite they are the reading sessions (its BEGIN costs no round trip)."""
    engine = get_engine()
    if engine.dialect.name == "sqlite":
        return get_sessionmaker()
    return sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
