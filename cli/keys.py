"""`alignd keys create/list/revoke`: API keys, translated to and from api/auth/service.py.

Rotating a key is `create` for the same tenant, then `revoke` of the old key's id once clients use
the new one.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
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
    from api.core.db import get_writer_sessionmaker

    settings = settings_for(data_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        upgrade_database(settings)
    with get_writer_sessionmaker()() as session:
        row, key = create_key(session, tenant)
        typer.echo(f"created an API key for tenant {row.name} ({row.id}); it is shown only this once:")
    typer.echo(key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's keys.")] = None,
    data_dir: DataDir = None,
) -> None:
    """List API keys (id, prefix, tenant, created, revoked); never the keys themselves."""
    from api.auth.service import TenantNotFound, list_keys
    from api.core.db import get_writer_sessionmaker

    _open_database(data_dir)
    with get_writer_sessionmaker()() as session:
        try:
            keys = list_keys(session, tenant)
        except TenantNotFound as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from exc
    if not keys:
        typer.echo("no API keys (create one with `alignd keys create --tenant NAME`)")
        return
    typer.echo("ID\tPREFIX\tTENANT\tCREATED\tREVOKED")
    for key in keys:
        typer.echo(f"{key.id}\t{key.prefix}\t{key.tenant}\t{_timestamp(key.created_at)}\t{_timestamp(key.revoked_at)}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id, as `alignd keys list` shows it (key_...).")],
    data_dir: DataDir = None,
) -> None:
    """Revoke an API key; its next request is refused (401)."""
    from api.auth.service import KeyNotFound, revoke_key
    from api.core.db import get_writer_sessionmaker

    _open_database(data_dir)
    with get_writer_sessionmaker()() as session:
        try:
            key = revoke_key(session, key_id)
        except KeyNotFound as exc:
            typer.echo(f"error: {exc.message}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(f"API key {key.id} ({key.prefix}..., tenant {key.tenant}) revoked at {_timestamp(key.revoked_at)}")


def _open_database(data_dir: Path | None) -> None:
    settings = settings_for(data_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        upgrade_database(settings)  # as `keys create` does: a fresh embedded data dir just has no keys


def _timestamp(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "-"
