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


def _session() -> Iterator[Session]:
    yield from session_scope()


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
    return authenticate(session, request.headers.get("authorization"))


TenantDep = Annotated[Tenant, Depends(_tenant)]
