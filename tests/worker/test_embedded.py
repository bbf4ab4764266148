"""The embedded worker `alignd serve` starts: it comes up on the SQLite broker and stops cleanly."""

from __future__ import annotations

import os
import time
from pathlib import Path

from api.core.settings import Settings
from migrations.run import upgrade
from worker.embedded import settings_environment, start_embedded_worker


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_the_embedded_worker_starts_on_the_sqlite_broker_and_stops_with_its_pool(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", worker_gpus=0)
    assert settings.embedded
    settings.data_dir.mkdir()
    upgrade(settings.resolved_database_url)

    worker = start_embedded_worker(settings)
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in worker.log_file.read_bytes():
            assert worker.running(), worker.log_file.read_text()
            assert time.monotonic() < deadline, "the embedded worker did not start"
            time.sleep(0.3)
        assert "sqla+sqlite:///" in worker.log_file.read_text()
        pool = _children(worker.process.pid)
        assert pool, "a prefork pool process"
    finally:
        started = time.monotonic()
        worker.stop()
    assert not worker.running() and time.monotonic() - started < 15
    assert not [pid for pid in pool if Path(f"/proc/{pid}").exists()]


def test_the_embedded_worker_gets_the_same_settings_with_paths_resolved(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = settings_environment(Settings(data_dir=Path("relative"), queue="q1"))
    assert env["ALIGND_DATA_DIR"] == str(tmp_path / "relative")
    assert env["ALIGND_BROKER_URL"] == f"sqla+sqlite:///{tmp_path / 'relative' / 'broker.db'}"
    assert env["ALIGND_QUEUE"] == "q1"
    for name in [n for n in os.environ if n.startswith("ALIGND_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    rebuilt = Settings()
    assert rebuilt.resolved_database_url == f"sqlite:///{tmp_path / 'relative' / 'alignd.db'}"
    assert rebuilt.embedded


def test_the_embedded_worker_gets_the_s3_secret_itself_not_its_mask() -> None:
    settings = Settings(storage_url="s3://bucket/prefix", s3_access_key_id="id", s3_secret_access_key="s3cr3t")  # type: ignore[arg-type]
    env = settings_environment(settings)
    assert env["ALIGND_S3_SECRET_ACCESS_KEY"] == "s3cr3t" and env["ALIGND_S3_ACCESS_KEY_ID"] == "id"
    assert env["ALIGND_STORAGE_URL"] == "s3://bucket/prefix"
