"""Shared fixtures: real Postgres (and Redis as the broker, moto's S3 server as a store) with the real
migrations applied.

- `backend` is "postgres" by default; parametrize a test with
  `@pytest.mark.parametrize("backend", ["postgres", "sqlite"])` to run it on the embedded SQLite too.
- `database_url`: a fresh database per test. On Postgres it is a copy of a template database that
  `alembic upgrade head` built once per session (CREATE DATABASE ... TEMPLATE is much cheaper than
  re-running the migrations for every test; the schema is still the migrations' own).
- `store` is "file" by default; parametrize a test with `@pytest.mark.parametrize("store", ["file", "s3"])`
  to run it with the artifact store in S3 too (a fresh bucket on the session's moto server).
- `settings`: points alignd's Settings at that database, a tmp data dir / artifact store / models dir /
  hub cache (the hub itself is never reached: HF_HUB_OFFLINE) and the Redis broker through ALIGND_*
  variables, and clears every cache (`api.core.reset_caches`) before and after. Worker tests may
  `monkeypatch.setenv(...)` more and call `reset_caches()` again.
- `client` (FastAPI TestClient), `tenant` / `other_tenant` (a tenant with a fresh API key) and
  `auth` / `other_auth` (their Authorization headers).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.live import live_alignd, live_embedded, live_postgres  # noqa: F401 (live alignd servers for tests/client and tests/cli)
from tests.services import create_bucket, create_database, postgres_server, redis_server, s3_server

if TYPE_CHECKING:
    from fastapi.testclient import TestClient
    from sqlalchemy.orm import Session

    from api.core.settings import Settings

TEMPLATE_DB = "alignd_template"

# Tests never reach the model hub: a hub id resolves from the test's own hub cache or not at all.
# Set before huggingface_hub is imported, and inherited by every server and worker the tests start.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A throwaway Postgres for the whole session (URL of its `postgres` database)."""
    with postgres_server() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_template(postgres_server_url: str) -> str:
    """Name of a database migrated to head once per session; tests copy it."""
    from migrations.run import upgrade

    upgrade(create_database(postgres_server_url, TEMPLATE_DB))
    return TEMPLATE_DB


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A throwaway Redis for the whole session (the Celery broker of API and worker tests)."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A throwaway S3-compatible server (moto) for the whole session: its endpoint URL."""
    with s3_server() as url:
        yield url


@pytest.fixture
def store() -> str:
    """Artifact store of a test; parametrize with ["file", "s3"] to run it on S3 too."""
    return "file"


@pytest.fixture
def s3_environment(s3_endpoint: str) -> dict[str, str]:
    """ALIGND_* variables of a store in a fresh bucket on the session's S3 server."""
    return {
        "ALIGND_STORAGE_URL": f"s3://{create_bucket(s3_endpoint)}/alignd",
        "ALIGND_S3_ENDPOINT_URL": s3_endpoint,
        "ALIGND_S3_REGION": "us-east-1",
        "ALIGND_S3_ACCESS_KEY_ID": "test",
        "ALIGND_S3_SECRET_ACCESS_KEY": "test",
        "ALIGND_S3_ADDRESSING_STYLE": "path",
        "ALIGND_S3_PART_SIZE_BYTES": str(5 * 1024**2),
    }


@pytest.fixture
def backend() -> str:
    """Database backend of a test; parametrize with ["postgres", "sqlite"] to run on both."""
    return "postgres"


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    if backend == "sqlite":
        from migrations.run import upgrade

        url = f"sqlite:///{tmp_path / 'alignd.db'}"
        upgrade(url)
        yield url
        return
    if backend != "postgres":
        raise ValueError(f"unknown backend {backend!r}")
    import sqlalchemy as sa

    server = request.getfixturevalue("postgres_server_url")
    template = request.getfixturevalue("postgres_template")
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        from api.core import reset_caches

        reset_caches()  # close pooled connections before dropping
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def settings(
    database_url: str,
    redis_url: str,
    store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Settings]:
    """alignd's Settings pointed at this test's database, data dir, artifact store and broker."""
    from api.core import reset_caches
    from api.core.settings import get_settings

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("ALIGND_DATA_DIR", str(data_dir))
    monkeypatch.setenv("ALIGND_DATABASE_URL", database_url)
    monkeypatch.setenv("ALIGND_BROKER_URL", redis_url)
    if store == "s3":
        for name, value in request.getfixturevalue("s3_environment").items():
            monkeypatch.setenv(name, value)
    elif store == "file":
        monkeypatch.setenv("ALIGND_STORAGE_URL", f"file://{tmp_path / 'artifacts'}")
    else:
        raise ValueError(f"unknown store {store!r}")
    monkeypatch.setenv("ALIGND_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ALIGND_HUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("ALIGND_QUEUE", f"q_{uuid.uuid4().hex[:8]}")
    reset_caches()
    yield get_settings()
    reset_caches()


@pytest.fixture
def session(settings: Settings) -> Iterator[Session]:
    """A database session on this test's database (for arranging rows and checking what was stored)."""
    from api.core.db import get_sessionmaker

    with get_sessionmaker()() as s:
        yield s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    from fastapi.testclient import TestClient

    from api.main import create_app

    with TestClient(create_app()) as c:
        yield c


@dataclass
class TenantKey:
    id: str
    name: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def make_tenant(name: str) -> TenantKey:
    """Create a tenant with a fresh API key in the configured database."""
    from api.auth.service import create_key
    from api.core.db import get_sessionmaker

    with get_sessionmaker()() as s:
        tenant, key = create_key(s, name)
        return TenantKey(tenant.id, tenant.name, key)


@pytest.fixture
def tenant(settings: Settings) -> TenantKey:
    return make_tenant("acme")


@pytest.fixture
def other_tenant(settings: Settings) -> TenantKey:
    return make_tenant("globex")


@pytest.fixture
def auth(tenant: TenantKey) -> dict[str, str]:
    return tenant.headers


@pytest.fixture
def other_auth(other_tenant: TenantKey) -> dict[str, str]:
    return other_tenant.headers
