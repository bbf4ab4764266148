"""Run the Alembic migrations from code (`alignd migrate`, `alignd serve`, the test fixtures).

It lives beside the migrations, not in api/: migrations depend on api (its models and settings),
and api never depends on migrations; whoever upgrades a database (the CLI, tests) imports this.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config


def alembic_config(database_url: str | None = None) -> Config:
    """Alembic's config without alembic.ini: the script folder is this module's folder.

    With no URL, migrations/env.py takes it from Settings (ALIGND_DATABASE_URL or the embedded SQLite).
    """
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).resolve().parent))
    if database_url is not None:
        config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def pending(database_url: str | None = None) -> bool:
    """Whether the database is behind the newest migration (or has none applied)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine, pool

    from api.core.settings import get_settings

    config = alembic_config(database_url)
    heads = set(ScriptDirectory.from_config(config).get_heads())
    engine = create_engine(database_url or get_settings().resolved_database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads()) != heads
    finally:
        engine.dispose()
