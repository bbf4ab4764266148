"""The `alignd` app: serve, worker and migrate here; `keys` and `models` in their own modules; `datasets`,
`jobs`, `pipelines` and `checkpoints` talk to a running server through the client (cli/remote.py).

Every command takes --data-dir (cli/data_dir.py).
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import typer

from cli.checkpoints import checkpoints_app
from cli.data_dir import DataDir, settings_for, upgrade_database
from cli.datasets import datasets_app
from cli.jobs import jobs_app
from cli.keys import keys_app
from cli.models import models_app
from cli.pipelines import pipelines_app
from cli.plan import plan_command

app = typer.Typer(
    help="alignd: self-hosted preference alignment (DPO, GRPO, PPO, reward models, SFT).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
app.add_typer(models_app, name="models")
app.command("plan")(plan_command)
# Commands for a running server (through client/, over HTTP; --url/--api-key or ALIGND_URL/ALIGND_API_KEY):
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")
app.add_typer(pipelines_app, name="pipelines")
app.add_typer(checkpoints_app, name="checkpoints")


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Create or upgrade the database schema (alembic upgrade head)."""
    settings = settings_for(data_dir)
    upgrade_database(settings)
    typer.echo(f"database at head: {_redacted(settings.resolved_database_url)}")


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    worker: Annotated[bool, typer.Option(help="Start the embedded worker (embedded SQLite broker only).")] = True,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="API processes sharing the port (uvicorn's --workers): each has its own connection pool, "
            "key cache and event-stream watcher. More than one lets the API use more than one core.",
        ),
    ] = 1,
) -> None:
    """Run the API (and, with the embedded defaults, a worker beside it)."""
    import uvicorn

    from api.main import create_app

    settings = settings_for(data_dir)
    if settings.resolved_database_url.startswith("sqlite"):
        upgrade_database(settings)  # the embedded default needs no separate `alignd migrate`
    else:
        from migrations.run import pending

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
        if processes > 1:  # each process builds its app from the environment settings_for() set up
            uvicorn.run("api.main:create_app", factory=True, host=host, port=port, workers=processes)
        else:
            uvicorn.run(create_app(), host=host, port=port)
    finally:
        if embedded is not None:
            embedded.stop()


@app.command("worker")
def worker_command(data_dir: DataDir = None) -> None:
    """Run a training worker (Celery) for the configured broker."""
    from worker.main import run_worker

    run_worker(settings_for(data_dir))


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
