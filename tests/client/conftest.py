"""Client tests run against a live `alignd serve` (tests/live.py): on Postgres + Redis and on the
embedded default, each with a real worker process running the fake trainer; both servers are started
once per session and shared with tests/cli."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from client import Client
from tests.live import LiveServer


@pytest.fixture
def server(live: LiveServer) -> LiveServer:
    return live


@pytest.fixture
def alignd(server: LiveServer) -> Iterator[Client]:
    with Client(server.url, api_key=server.key) as client:
        yield client
