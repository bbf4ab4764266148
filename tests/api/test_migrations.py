"""Alembic owns the schema: head matches the ORM models, and every revision upgrades and downgrades."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from api.core.models import Base
from migrations.run import alembic_config


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_migrations_at_head_match_the_models_and_downgrade_cleanly(database_url: str, backend: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
        config = alembic_config(database_url)
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        command.upgrade(config, "head")
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
    finally:
        engine.dispose()


def test_pending_tells_a_fresh_database_from_one_at_head(postgres_server_url: str) -> None:
    from migrations.run import pending, upgrade
    from tests.services import create_database

    url = create_database(postgres_server_url, "pending_check")
    assert pending(url)
    upgrade(url)
    assert not pending(url)
