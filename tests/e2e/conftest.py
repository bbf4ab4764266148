"""End-to-end fixtures: the real `alignd` command in subprocesses, a tiny model, short real data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ALIGND = str(Path(sys.executable).with_name("alignd"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny")


@dataclass
class Service:
    """An `alignd ...` process in its own process group, its output in a log file."""

    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                raise AssertionError(f"{self.log.name} exited early:\n{self.tail()}")
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {text!r} in {self.log.name}:\n{self.tail()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 60) -> int:
        """Signal the main process only (as a service manager would) and wait for it to exit."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                raise AssertionError(f"{self.log.name} did not stop within {timeout}s:\n{self.tail()}") from None
        return self.process.returncode


@pytest.fixture
def run_alignd(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start `alignd ARGS...` in the background; every started process is stopped at the end."""
    started: list[Service] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Service:
        log = tmp_path / f"alignd-{args[0]}-{len(started)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [ALIGND, *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        service = Service(process, log)
        started.append(service)
        return service

    yield start
    for service in started:
        if service.process.poll() is None:
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()
        print(f"--- {service.log.name} ---\n{service.tail()}")


def alignd(*args: str, env: dict[str, str] | None = None) -> str:
    """Run an `alignd` command to completion; returns its output."""
    done = subprocess.run([ALIGND, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def clean_environment() -> dict[str, str]:
    """This process's environment without ALIGND_* (the embedded defaults must need nothing)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ALIGND_")}


# The worker fixtures (real `alignd worker` processes, short leases, direct database access).
from tests.worker.conftest import db, start_worker, worker_settings  # noqa: E402, F401
