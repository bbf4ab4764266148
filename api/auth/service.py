"""API keys: created by the operator (`alignd keys create`), shown once, stored as sha256.

Listed and revoked by the operator too (`alignd keys list/revoke`). An API process trusts a key it has
looked up for `auth_cache_seconds` (default 5) before looking it up again, which spares a query on
almost every request of a busy client; so a revocation (made by the CLI, in another process) takes
effect within that bound on every API process. Unknown and revoked keys are never cached.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth.models import ApiKey, Tenant
from api.core.db import utcnow
from api.core.errors import NotFound, Unauthorized

KEY_PREFIX = "alignd_"


def hash_key(key: str) -> str:
    # A key carries 256 random bits, so a plain sha256 is enough (no slow KDF needed, unlike passwords).
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, tenant_name: str) -> tuple[Tenant, str]:
    """Create a key for the tenant `tenant_name` (created too if new); returns the key in clear, once."""
    tenant = session.execute(select(Tenant).where(Tenant.name == tenant_name)).scalar_one_or_none()
    if tenant is None:
        tenant = Tenant(name=tenant_name)
        session.add(tenant)
        session.flush()
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant.id, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 4]))
    session.commit()
    return tenant, key


def key_of(authorization: str | None) -> str:
    """The key in an Authorization header (`Bearer <key>`), or Unauthorized saying what is wrong with it."""
    if not authorization:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (create one with `alignd keys create`)")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    return key.strip()


def authenticate(session: Session, authorization: str | None) -> Tenant:
    """The tenant owning the Bearer key in an Authorization header, or Unauthorized."""
    key_hash = hash_key(key_of(authorization))
    checked_at = time.monotonic()  # before the query: a revocation it does not see came after this
    row = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid or revoked API key")
    _trusted[key_hash] = (checked_at, Tenant(id=row.id, name=row.name, created_at=row.created_at))
    if len(_trusted) > _TRUSTED_MAX:  # only valid keys get here, so this is many tenants, not an attack
        _trusted.clear()
    return row


def trusted_tenant(authorization: str | None, max_age_seconds: float) -> Tenant | None:
    """The tenant of a key `authenticate` accepted less than `max_age_seconds` ago in this process, without
    a query; None when it must be looked up (never seen, too old, or caching off). A malformed header
    is Unauthorized here already. The tenant is a detached copy: read its fields, never add it to a session."""
    key_hash = hash_key(key_of(authorization))
    hit = _trusted.get(key_hash)
    if hit is None or time.monotonic() - hit[0] >= max_age_seconds:
        return None
    return hit[1]


_trusted: dict[str, tuple[float, Tenant]] = {}
"""key hash -> (when authenticate last accepted it, time.monotonic(); its tenant)."""
_TRUSTED_MAX = 10_000


class KeyNotFound(NotFound):
    pass


class TenantNotFound(NotFound):
    pass


@dataclass(frozen=True)
class KeyInfo:
    """What an operator may see of a key: never the key or its hash."""

    id: str
    prefix: str
    tenant: str
    created_at: datetime
    revoked_at: datetime | None


def _info(key: ApiKey, tenant_name: str) -> KeyInfo:
    return KeyInfo(key.id, key.prefix, tenant_name, key.created_at, key.revoked_at)


def list_keys(session: Session, tenant_name: str | None = None) -> list[KeyInfo]:
    """Every key (revoked ones too) by tenant name, oldest first; only `tenant_name`'s when given."""
    query = select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id)
    if tenant_name is not None:
        if session.execute(select(Tenant.id).where(Tenant.name == tenant_name)).first() is None:
            raise TenantNotFound(f"no tenant named {tenant_name!r}; `alignd keys list` shows every tenant's keys")
        query = query.where(Tenant.name == tenant_name)
    rows = session.execute(query.order_by(Tenant.name, ApiKey.created_at, ApiKey.id)).all()
    return [_info(key, name) for key, name in rows]


def revoke_key(session: Session, key_id: str) -> KeyInfo:
    """Revoke the key `key_id`; its next request is 401. Revoking a revoked key keeps its first time."""
    row = session.execute(
        select(ApiKey, Tenant.name).join(Tenant, ApiKey.tenant_id == Tenant.id).where(ApiKey.id == key_id)
    ).first()
    if row is None:
        raise KeyNotFound(f"no API key with id {key_id!r}; `alignd keys list` shows the ids")
    key, tenant_name = row.tuple()
    _trusted.pop(key.key_hash, None)  # this process at once; the API processes within auth_cache_seconds
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.commit()
    return _info(key, tenant_name)
