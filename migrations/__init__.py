"""Alembic migrations: the only way alignd's schema is created or changed."""
