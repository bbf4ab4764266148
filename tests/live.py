"""A live alignd for the client and CLI tests: `alignd serve` on a real port, in two flavours.

- "postgres": `alignd serve --no-worker` on a fresh Postgres database with Redis as the broker, and
  a real Celery worker process (`tests/worker/fake_worker.py`) whose trainer is the fake one from
  tests/worker, so a job takes about a second.
- "embedded": the embedded default (nothing configured but a data directory: SQLite database and
  broker) served by `alignd serve --no-worker`, with the same fake-trainer worker process in the
  place of the embedded worker (which is `python -m worker` on the same settings).
- "embedded-real": plain `alignd serve` on a data directory, its embedded worker running the real
  trainer on the tiny model from tests/tiny.py (a job takes ~20 s on the 2-core dev box).

Both get an API key from `alignd keys create`. Traffic can go through `CuttingProxy`, which drops
chosen connections after a number of response bytes, to test resumption.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parents[1]
ALIGND = str(Path(sys.executable).with_name("alignd"))


@dataclass
class LiveServer:
    flavour: str
    url: str
    key: str
    data_dir: Path
    model: str
    """A MODEL_REF that trains (the fake trainer's "fake" folder, or the real tiny model)."""
    failing_model: str | None
    """A MODEL_REF whose job fails (the fake trainer's "error"); None on the real trainer."""
    logs: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"ALIGND_URL": self.url, "ALIGND_API_KEY": self.key}

    def tail(self) -> str:
        return "\n".join(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """`sig` to the main process (as a service manager does), then SIGKILL to its group."""
    if process.poll() is None:
        process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait(what: str, ready: callable, processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:  # type: ignore[valid-type]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ready():
            return
        for process, log in zip(processes, logs, strict=True):
            if process.poll() is not None:
                raise AssertionError(f"{log.name} exited early:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def live_server(
    flavour: str,
    root: Path,
    *,
    postgres_url: str | None = None,
    redis_url: str | None = None,
    tiny_model_dir: Path | None = None,
    api_processes: int = 1,
) -> Iterator[LiveServer]:
    """Start the flavour's processes under `root` (`alignd serve --processes api_processes`); yields the
    server once it answers /readyz."""
    data_dir = root / "data"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}
    base_env["ALIGND_DATA_DIR"] = str(data_dir)
    base_env["ALIGND_WORKER_GPUS"] = "0"
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    if flavour == "postgres":
        assert postgres_url and redis_url
        env = {
            **base_env,
            "ALIGND_DATABASE_URL": postgres_url,
            "ALIGND_BROKER_URL": redis_url,
            "ALIGND_STORAGE_URL": f"file://{root / 'artifacts'}",
            "ALIGND_QUEUE": f"q_{uuid.uuid4().hex[:8]}",
            "ALIGND_HEARTBEAT_SECONDS": "0.5",
            "FAKE_STEP_SECONDS": "0.05",
        }
        for name in ("fake", "error"):
            (data_dir / "models" / name).mkdir(parents=True)
        model, failing = "fake", "error"
    elif flavour == "embedded":
        env = {**base_env, "FAKE_STEP_SECONDS": "0.05"}
        for name in ("fake", "error"):
            (data_dir / "models" / name).mkdir(parents=True)
        model, failing = "fake", "error"
    elif flavour == "embedded-real":
        assert tiny_model_dir is not None
        env = base_env
        shutil.copytree(tiny_model_dir, data_dir / "models" / "tiny")
        model, failing = "tiny", None
    else:
        raise ValueError(flavour)
    keys = subprocess.run(
        [ALIGND, "keys", "create", "--tenant", "acme"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert keys.returncode == 0, keys.stdout + keys.stderr
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fake_worker = flavour != "embedded-real"
    serve = [ALIGND, "serve", "--port", str(port), "--processes", str(api_processes)]
    serve += ["--no-worker"] if fake_worker else []
    logs.append(root / f"serve-{flavour}.log")
    processes.append(_start(serve, env, logs[-1]))
    try:
        _wait("alignd serve", lambda: _ready(url), processes, logs)
        if fake_worker:
            logs.append(root / "worker.log")
            processes.append(_start([sys.executable, "-m", "tests.worker.fake_worker"], env, logs[-1]))
        worker_log = logs[-1] if fake_worker else data_dir / "worker.log"
        _wait("the worker", lambda: worker_log.exists() and b" ready." in worker_log.read_bytes(), processes, logs)
        yield LiveServer(flavour, url, keys.stdout.strip().splitlines()[-1], data_dir, model, failing, logs)
    finally:
        for process, log in reversed(list(zip(processes, logs, strict=True))):
            # the fake worker holds nothing worth a graceful stop (which takes Celery seconds): it is killed
            _stop(process, signal.SIGKILL if log.name == "worker.log" else signal.SIGTERM)


class CuttingProxy:
    """A TCP proxy to `target` that drops the first `cuts` connections whose request matches `match`
    after `after_bytes` bytes of the response; every request head it forwards is recorded."""

    def __init__(self, target: str, *, match: bytes, after_bytes: int, cuts: int = 1) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.match, self.after_bytes, self.cuts_left = match, after_bytes, cuts
        self.requests: list[bytes] = []
        self.cut = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(downstream,), daemon=True).start()

    def _serve(self, downstream: socket.socket) -> None:
        upstream = socket.create_connection(self.target)
        head = downstream.recv(65536)
        self.requests.append(head)
        limit = None
        if self.match in head and self.cuts_left > 0:
            self.cuts_left -= 1
            limit = self.after_bytes
        upstream.sendall(head)
        threading.Thread(target=self._pipe, args=(downstream, upstream, None), daemon=True).start()
        self._pipe(upstream, downstream, limit)

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := source.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    sink.sendall(data[: limit - sent])
                    self.cut += 1
                    break
                sink.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


# ---- session-wide fixtures (imported by tests/conftest.py, so tests/client and tests/cli share them) ----


@pytest.fixture(scope="session")
def live_postgres(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, redis_url: str
) -> Iterator[LiveServer]:
    """alignd on a fresh Postgres database (a copy of the migrated template) and Redis."""
    import sqlalchemy as sa

    server_url = request.getfixturevalue("postgres_server_url")
    template = request.getfixturevalue("postgres_template")
    name = f"live_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    admin.dispose()
    database_url = server_url.rsplit("/", 1)[0] + f"/{name}"
    with live_server(
        "postgres", tmp_path_factory.mktemp("live-postgres"), postgres_url=database_url, redis_url=redis_url
    ) as live:
        yield live
        print(live.tail())


@pytest.fixture(scope="session")
def live_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """alignd on the embedded defaults (a data directory and nothing else), fake-trainer worker."""
    with live_server("embedded", tmp_path_factory.mktemp("live-embedded")) as live:
        yield live
        print(live.tail())


@pytest.fixture(params=["postgres", "embedded"])
def live_alignd(request: pytest.FixtureRequest) -> LiveServer:
    """A test using this runs on both live servers."""
    return request.getfixturevalue(f"live_{request.param}")
