"""FastAPI dependencies as Annotated aliases: SessionDep, SettingsDep, StorageDep, TenantDep.

The session and tenant dependencies are async so that they cost no thread of their own: FastAPI runs a
sync dependency on the thread pool, and a job GET used to take four trips there (session open, key
lookup, route, session close) where it now takes one or two (the route, and the close when a
transaction is open). Under load each trip waits for a thread and for the GIL.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.auth.models import Tenant
from api.auth.service import authenticate, trusted_tenant
from api.core.db import get_reader_sessionmaker, get_writer_sessionmaker
from api.core.settings import Settings, get_settings
from api.core.storage import Storage, get_storage

READ_METHODS = ("GET", "HEAD", "OPTIONS")
T = TypeVar("T")


async def _session(request: Request) -> AsyncIterator[Session]:
    # Requests that may change something are writers: on SQLite their transactions take the write lock
    # when they begin (api/core/db.py); reads never wait for it, and on Postgres run without a
    # transaction around them (get_reader_sessionmaker). Opening a session does no I/O.
    session = (get_reader_sessionmaker() if request.method in READ_METHODS else get_writer_sessionmaker())()
    try:
        yield session
    finally:
        if session.in_transaction():  # a rollback and the connection's return: I/O, so on a thread
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

# Declared for OpenAPI (the Authorize button in /docs); the header itself is checked by authenticate,
# which tells a missing key from a malformed header.
_bearer = HTTPBearer(auto_error=False, description="An API key from `alignd keys create --tenant NAME`.")


async def _tenant(
    request: Request,
    session: SessionDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    authorization = request.headers.get("authorization")
    tenant = trusted_tenant(authorization, get_settings().auth_cache_seconds)
    if tenant is None:
        tenant = await run_in_threadpool(_look_up, session, authorization, request.method not in READ_METHODS)
    return tenant


def _look_up(session: Session, authorization: str | None, writer: bool) -> Tenant:
    tenant = authenticate(session, authorization)
    if writer:
        # End this transaction: the route may stream a large upload before its next query, and on SQLite
        # a writer's transaction holds the write lock (api/core/db.py). Reads keep theirs (one checkout).
        session.commit()
    return tenant


TenantDep = Annotated[Tenant, Depends(_tenant)]


async def read_on_thread(session: Session, read: Callable[[], T]) -> T:
    """`read()` on the thread pool, and the end of the session's transaction on the same trip (an async
    read route takes one trip where a sync one takes three: the route, its response's validation and the
    session's close). `read` must return what needs no more I/O (a response model, not ORM rows)."""

    def read_and_close() -> T:
        try:
            return read()
        finally:
            session.close()

    return await run_in_threadpool(read_and_close)
