"""API keys: created by the operator (`alignd keys create`), shown once, stored as sha256."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.auth.models import ApiKey, Tenant
from api.core.errors import Unauthorized

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


def authenticate(session: Session, authorization: str | None) -> Tenant:
    """The tenant owning the Bearer key in an Authorization header, or Unauthorized."""
    if not authorization:
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>' (create one with `alignd keys create`)")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("malformed Authorization header: expected 'Bearer <key>'")
    row = session.execute(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.key_hash == hash_key(key.strip()), ApiKey.revoked_at.is_(None))
    ).scalar_one_or_none()
    if row is None:
        raise Unauthorized("invalid or revoked API key")
    return row
