"""`alignd`: serve, worker, migrate, keys create, models add/list (DESIGN §8).

Every command takes --data-dir. The CLI is the one place that writes ALIGND_DATA_DIR: it sets the
variable and rebuilds Settings, so the whole process (and any worker it starts) reads one data
directory through Settings; nothing else touches the environment.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from api.core.settings import Settings

app = typer.Typer(
    help="alignd: self-hosted preference alignment (DPO, GRPO, PPO, reward models, SFT).", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
models_app = typer.Typer(help="The server's model directory.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Data directory of the embedded defaults (ALIGND_DATA_DIR).", show_default=False),
]


def _settings(data_dir: Path | None) -> Settings:
    from api.core import reset_caches
    from api.core.settings import get_settings

    if data_dir is not None:
        # A write, not a read: Settings stays the only reader, and the embedded worker this process
        # may start inherits the same data directory.
        os.environ["ALIGND_DATA_DIR"] = str(data_dir.expanduser().resolve())
    reset_caches()
    return get_settings()


def _migrate(settings: Settings) -> None:
    from api.core.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema (alembic upgrade head)."""
    settings = _settings(data_dir)
    _migrate(settings)
    typer.echo(f"database at head: {_redacted(settings.resolved_database_url)}")


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[bool, typer.Option(help="Start the embedded worker (embedded SQLite broker only).")] = True,
) -> None:
    """Run the API (and, with the embedded defaults, a worker beside it)."""
    import uvicorn

    from api.main import create_app

    settings = _settings(data_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        _migrate(settings)  # the embedded default needs no separate `alignd migrate`
    else:
        from api.core.migrate import pending

        if pending(settings.resolved_database_url):
            typer.echo("error: the database schema is not at the newest migration; run `alignd migrate`", err=True)
            raise typer.Exit(1)
    embedded = None
    if settings.embedded and worker:
        from worker.embedded import start_embedded_worker

        embedded = start_embedded_worker(settings)
        typer.echo(f"embedded worker started (log: {embedded.log_file})")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal with the handler that was
    # installed before it started; make that handler an exit so the `finally` stops the worker cleanly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    try:
        uvicorn.run(create_app(), host=host, port=port)
    finally:
        if embedded is not None:
            embedded.stop()


@app.command("worker")
def worker_command(data_dir: DataDir = None) -> None:
    """Run a training worker (Celery) for the configured broker."""
    from worker.main import run_worker

    run_worker(_settings(data_dir))


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant name (created if new).")],
    data_dir: DataDir = None,
) -> None:
    """Create an API key; it is printed once, alone on the last line."""
    from api.auth.service import create_key
    from api.core.db import get_sessionmaker

    settings = _settings(data_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        _migrate(settings)
    with get_sessionmaker()() as session:
        row, key = create_key(session, tenant)
        typer.echo(f"created an API key for tenant {row.name} ({row.id}); it is shown only this once:")
    typer.echo(key)


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Name jobs will use as base_model.")],
    source: Annotated[Path, typer.Argument(help="A local Hugging Face model folder or a .gguf file.")],
    data_dir: DataDir = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an existing model of that name.")] = False,
) -> None:
    """Add a model to the server's model directory."""
    from api.models_dir.service import ModelSourceError, add_model

    settings = _settings(data_dir)
    try:
        target = add_model(settings, name, source, replace=replace)
    except ModelSourceError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"added model {name} at {target}")


@models_app.command("list")
def models_list(data_dir: DataDir = None) -> None:
    """List the server's models."""
    from api.models_dir.service import list_models

    settings = _settings(data_dir)
    models = list_models(settings)
    if not models:
        typer.echo(f"no models in {settings.resolved_models_dir} (add one with `alignd models add NAME SOURCE`)")
        return
    for model in models:
        kind = "adapter" if model.adapter else "model"
        typer.echo(f"{model.name}\t{kind}\t{model.bytes / 1e6:.1f} MB")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
