"""`alignd migrate` and `keys create` on the embedded default: a data directory and nothing else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect
from typer.testing import CliRunner

from api.core import reset_caches
from api.core.models import Base
from cli.main import app


@pytest.fixture
def bare_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ALIGND_* configuration; the CLI's own ALIGND_DATA_DIR write is undone afterwards."""
    monkeypatch.setenv("ALIGND_DATA_DIR", "unused")
    for name in ("ALIGND_DATABASE_URL", "ALIGND_BROKER_URL", "ALIGND_STORAGE_URL", "ALIGND_MODELS_DIR"):
        monkeypatch.delenv(name, raising=False)
    reset_caches()
    yield
    reset_caches()


def test_migrate_creates_the_embedded_sqlite_database_under_the_data_dir(
    bare_environment: None, tmp_path: Path
) -> None:
    data_dir = tmp_path / "fresh"
    result = CliRunner().invoke(app, ["migrate", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert f"sqlite:///{data_dir / 'alignd.db'}" in result.output
    engine = create_engine(f"sqlite:///{data_dir / 'alignd.db'}")
    assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    engine.dispose()
    # Running it again is a no-op.
    assert CliRunner().invoke(app, ["migrate", "--data-dir", str(data_dir)]).exit_code == 0


def test_keys_create_on_a_fresh_data_dir_migrates_first(bare_environment: None, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "acme", "--data-dir", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[-1].startswith("alignd_")


def test_serve_refuses_a_postgres_database_that_is_not_migrated(
    bare_environment: None, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from tests.services import create_database

    monkeypatch.setenv("ALIGND_DATABASE_URL", create_database(postgres_server_url, "not_migrated"))
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--no-worker"])
    assert result.exit_code == 1
    assert "alignd migrate" in result.output
