"""A live `alignd serve` (embedded SQLite, its own data dir) with a worker running the fake trainer,
and headless Chromium (Debian's `chromium`, scripts/install-services.sh) driven by Playwright."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.e2e.conftest import ALIGND, alignd, clean_environment
from tests.services import free_port
from tests.tiny import build_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]
FAKE_TRAINER = Path(__file__).with_name("fake_trainer.py")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Live:
    url: str
    key: str
    other_key: str
    data_dir: Path


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """`alignd serve --no-worker` plus `python -m tests.worker.fake_worker` running tests/dashboard/fake_trainer.py,
    on one data dir."""
    base = tmp_path_factory.mktemp("dashboard")
    data_dir = base / "data"
    model = base / "tiny"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "fake"}')
    env = {**clean_environment(), "PYTHONUNBUFFERED": "1", "FAKE_STEP_SECONDS": "0.25"}
    alignd("models", "add", "tiny", str(model), "--data-dir", str(data_dir), env=env)
    chat = base / "tiny-chat"  # a real tokenizer with a chat template, for the rendered dataset preview
    build_tiny_tokenizer(chat)
    (chat / "config.json").write_text('{"model_type": "llama"}')
    alignd("models", "add", "tiny-chat", str(chat), "--data-dir", str(data_dir), env=env)
    key = alignd("keys", "create", "--tenant", "acme", "--data-dir", str(data_dir), env=env).strip().splitlines()[-1]
    other = alignd("keys", "create", "--tenant", "rival", "--data-dir", str(data_dir), env=env)
    other_key = other.strip().splitlines()[-1]
    port = free_port()
    serve_log, worker_log = base / "serve.log", base / "worker.log"
    serve = _start([ALIGND, "serve", "--data-dir", str(data_dir), "--port", str(port), "--no-worker"], env, serve_log)
    worker = _start(
        [sys.executable, "-m", "tests.worker.fake_worker"],
        {**env, "ALIGND_DATA_DIR": str(data_dir), "FAKE_TRAINER": str(FAKE_TRAINER)},
        worker_log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or serve.poll() is not None:
                raise AssertionError(f"alignd serve did not start:\n{serve_log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield Live(url, key, other_key, data_dir)
    finally:
        for process in (worker, serve):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        for log in (serve_log, worker_log):
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail("no chromium binary: run scripts/install-services.sh (installs Debian's chromium)")
    with sync_playwright() as p:
        # Debian's chromium, never a downloaded one; --no-sandbox because CI runs as root.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, live: Live) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1366, "height": 820}, accept_downloads=True, base_url=live.url)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
