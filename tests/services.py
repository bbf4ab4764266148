"""Real Postgres, Redis and S3 servers for the test session, started from installed binaries.

Written by hand rather than with pytest-postgresql / pytest-redis because CI runs as root and
`initdb` refuses root: Postgres has to be initialised and started as the `postgres` system user
in a directory it owns. `make test` installs the Debian packages when they are missing
(scripts/install-services.sh); these helpers only start and stop servers on loopback ports.
The S3 server is moto's server mode (`moto[server]`, a dev dependency): it speaks the S3 REST API
over HTTP, so boto3 talks to it exactly as to AWS or MinIO.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} not found: run scripts/install-services.sh (make test does)")
    return path


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


_restarts: dict[str, Callable[[float], None]] = {}
"""URL of a server these helpers started -> how to restart it (restart_server)."""


def restart_server(url: str, down_seconds: float = 0.0) -> None:
    """Stop a Postgres or Redis server started here (at once, as a crash or failover would) and start
    it again on the same port after `down_seconds`. Postgres keeps its data (its clients lose their
    connections); Redis has no persistence here, so it comes back empty (queued messages are lost)."""
    _restarts[url.rsplit("/", 1)[0]](down_seconds)


@contextmanager
def postgres_server(options: str = "") -> Iterator[str]:
    """Start a throwaway Postgres cluster; yields a SQLAlchemy URL of database `postgres`.
    `options`: more server settings, as `-c name=value ...`."""
    root = Path(tempfile.mkdtemp(prefix="alignd-pg-"))
    datadir = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = free_port()
    subprocess.run(
        _as_postgres([_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"]),
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off {options}".strip()
    pg_ctl = [_pg_bin("pg_ctl"), "-D", str(datadir)]
    start = _as_postgres([*pg_ctl, "-o", opts, "-l", str(root / "log"), "-w", "start"])
    subprocess.run(start, check=True, capture_output=True)
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def restart(down_seconds: float) -> None:
        subprocess.run(_as_postgres([*pg_ctl, "-m", "immediate", "-w", "stop"]), check=True, capture_output=True)
        time.sleep(down_seconds)
        subprocess.run(start, check=True, capture_output=True)

    _restarts[url.rsplit("/", 1)[0]] = restart
    try:
        yield url
    finally:
        subprocess.run(
            _as_postgres([_pg_bin("pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create a fresh database on the server; returns its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{what} did not start within {timeout}s")


@contextmanager
def s3_server() -> Iterator[str]:
    """Start moto's S3-compatible server on loopback; yields its endpoint URL (any credentials work)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, proc, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(endpoint: str):  # type: ignore[no-untyped-def]
    """A boto3 S3 client of the test server (moto accepts any credentials)."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )


def create_bucket(endpoint: str) -> str:
    """Create a bucket with a fresh name on the test server; returns its name."""
    import uuid

    name = f"alignd-{uuid.uuid4().hex[:12]}"
    s3_client(endpoint).create_bucket(Bucket=name)
    return name


@contextmanager
def redis_server() -> Iterator[str]:
    """Start a throwaway Redis on loopback; yields its redis:// URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: run scripts/install-services.sh (make test does)")
    port = free_port()
    root = tempfile.mkdtemp(prefix="alignd-redis-")
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        root,
    ]
    procs = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    _wait_for_port(port, procs[-1], "redis-server", timeout=20)
    url = f"redis://127.0.0.1:{port}/0"

    def restart(down_seconds: float) -> None:
        procs[-1].kill()
        procs[-1].wait(10)
        time.sleep(down_seconds)
        procs.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_port(port, procs[-1], "redis-server", timeout=20)

    _restarts[url.rsplit("/", 1)[0]] = restart
    try:
        yield url
    finally:
        procs[-1].terminate()
        procs[-1].wait(10)
        shutil.rmtree(root, ignore_errors=True)


class CuttableProxy:
    """A TCP proxy on loopback in front of `target` (host, port) whose link can be cut and restored.

    Cut, it closes every open connection and refuses new ones, as a store that went down does; the
    server behind it keeps its state, so a test can look at what was written once it is restored.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        import threading

        self.target, self.port = target, free_port()
        self.up = threading.Event()
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.restore()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        import threading

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self.up.set()
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self.up.clear()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            for sock in self._links:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._links.clear()

    def _accept(self, listener: socket.socket) -> None:
        import threading

        while self.up.is_set():
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.target)
            except OSError:
                return
            with self._lock:
                self._links += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
