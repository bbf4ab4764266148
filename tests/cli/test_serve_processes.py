"""`alignd serve --processes 2` on Postgres: requests are spread over two API processes, each with its own
event-stream watcher, and every stream, whichever process serves it, follows its job to the end."""

from __future__ import annotations

import concurrent.futures
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer, live_server
from tests.worker.conftest import short_preference_pairs


@pytest.fixture
def two_process_api(
    request: pytest.FixtureRequest, tmp_path: Path, redis_url: str, postgres_server_url: str
) -> Iterator[LiveServer]:
    from tests.services import create_database

    database_url = create_database(postgres_server_url, "two_processes")
    from migrations.run import upgrade

    upgrade(database_url)
    with live_server("postgres", tmp_path, postgres_url=database_url, redis_url=redis_url, api_processes=2) as live:
        yield live


def process_ids(url: str, scrapes: int = 30) -> set[str]:
    """The API processes that answered `scrapes` scrapes, each on a new connection."""
    seen = set()
    for _ in range(scrapes):
        text = httpx.get(f"{url}/metrics", headers={"Connection": "close"}, timeout=30).text
        match = re.search(r"^alignd_api_process_id (\S+)$", text, re.M)
        assert match, "no alignd_api_process_id in /metrics"
        seen.add(match.group(1))
    return seen


def statuses_streamed(url: str, key: str, job_id: str) -> list[str]:
    """Follow a job's SSE stream, on a connection of its own, until the server ends it."""
    found = []
    auth = {"Authorization": f"Bearer {key}"}
    with (
        httpx.Client(base_url=url, headers=auth, timeout=60) as client,
        client.stream("GET", f"/v1/jobs/{job_id}/events/stream") as response,
    ):
        assert response.status_code == 200
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "status":
                found.append(json.loads(line.split(":", 1)[1])["data"]["status"])
    return found


def test_two_api_processes_share_the_port_and_each_serves_event_streams_to_their_end(
    two_process_api: LiveServer,
) -> None:
    live = two_process_api
    assert len(process_ids(live.url)) == 2

    auth = {"Authorization": f"Bearer {live.key}"}
    with httpx.Client(base_url=live.url, headers=auth, timeout=60) as client:
        r = client.post("/v1/datasets", files={"file": ("pairs.jsonl", short_preference_pairs(8))})
        assert r.status_code == 201, r.text
        body = {"algorithm": "dpo", "base_model": live.model, "dataset_id": r.json()["id"]}
        body["hyperparameters"] = {"max_steps": 4, "save_every": 2}
        job_ids = []
        for _ in range(3):
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 201, r.text
            job_ids.append(r.json()["id"])

    # Two streams per job, each on a new connection: the kernel hands them to both processes.
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        streamed = list(pool.map(lambda job_id: statuses_streamed(live.url, live.key, job_id), job_ids * 2))

    assert streamed == [["queued", "running", "succeeded"]] * 6, live.tail()
