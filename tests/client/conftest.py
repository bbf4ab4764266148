"""Client tests run against a live `alignd serve` (tests/live.py): on Postgres + Redis with a real worker
process and the fake trainer, and on the embedded default (SQLite, embedded worker, real trainer on the
tiny model). The server is started once per test module and flavour."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from tests.live import LiveServer, live_server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@pytest.fixture(scope="module", params=["postgres", "embedded"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from start_live_server(request, tmp_path_factory, request.param)


def start_live_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, flavour: str
) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp(f"live-{flavour}")
    if flavour == "postgres":
        import uuid

        import sqlalchemy as sa

        server_url = request.getfixturevalue("postgres_server_url")
        template = request.getfixturevalue("postgres_template")
        name = f"live_{uuid.uuid4().hex[:12]}"
        admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
        options = {"postgres_url": server_url.rsplit("/", 1)[0] + f"/{name}", "redis_url": request.getfixturevalue("redis_url")}
    else:
        options = {"tiny_model_dir": request.getfixturevalue("tiny_model_dir")}
    with live_server(flavour, root, **options) as live:
        yield live
        print(live.tail())


@pytest.fixture
def alignd(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, api_key=server.key) as client:
        yield client
