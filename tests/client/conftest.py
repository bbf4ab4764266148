"""Client tests run against a live `alignd serve` (tests/live.py): on Postgres + Redis and on the
embedded default, each with a real worker process running the fake trainer; both servers are started
once per session and shared with tests/cli."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from tests.live import LiveServer


@pytest.fixture
def server(live_alignd: LiveServer) -> LiveServer:
    return live_alignd


@pytest.fixture
def alignd(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, api_key=server.key) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")
