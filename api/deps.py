"""FastAPI dependencies as Annotated aliases: SessionDep, SettingsDep, StorageDep, TenantDep."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.auth.models import Tenant
from api.auth.service import authenticate
from api.core.db import session_scope
from api.core.settings import Settings, get_settings
from api.core.storage import Storage, get_storage

READ_METHODS = ("GET", "HEAD", "OPTIONS")


def _session(request: Request) -> Iterator[Session]:
    # Requests that may change something are writers: on SQLite their transactions take the write lock
    # when they begin (api/core/db.py); reads never wait for it.
    yield from session_scope(writer=request.method not in READ_METHODS)


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

# Declared for OpenAPI (the Authorize button in /docs); the header itself is checked by authenticate,
# which tells a missing key from a malformed header.
_bearer = HTTPBearer(auto_error=False, description="An API key from `alignd keys create --tenant NAME`.")


def _tenant(
    request: Request,
    session: SessionDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Tenant:
    tenant = authenticate(session, request.headers.get("authorization"))
    if request.method not in READ_METHODS:
        # End this transaction: the route may stream a large upload before its next query, and on SQLite
        # a writer's transaction holds the write lock (api/core/db.py). Reads keep theirs (one checkout).
        session.commit()
    return tenant


TenantDep = Annotated[Tenant, Depends(_tenant)]
