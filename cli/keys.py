"""`alignd keys create`: API keys, translated to and from api/auth/service.py."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.data_dir import DataDir, settings_for, upgrade_database

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name (created if new).")],
    data_dir: DataDir = None,
) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    from api.auth.service import create_key
    from api.core.db import get_sessionmaker

    settings = settings_for(data_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        upgrade_database(settings)
    with get_sessionmaker()() as session:
        row, key = create_key(session, tenant)
        typer.echo(f"created an API key for tenant {row.name} ({row.id}); it is shown only this once:")
    typer.echo(key)
