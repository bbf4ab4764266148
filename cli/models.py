"""`alignd models add/list`: the server's model directory (ALIGND_MODELS_DIR)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.data_dir import DataDir, settings_for

models_app = typer.Typer(help="The server's model directory.", no_args_is_help=True)


@models_app.command("add")
def models_add(
    name: Annotated[str, typer.Argument(help="Name jobs will use as base_model.")],
    source: Annotated[Path, typer.Argument(help="A local Hugging Face model folder or a .gguf file.")],
    data_dir: DataDir = None,
    replace: Annotated[bool, typer.Option(help="Overwrite an existing model of that name.")] = False,
) -> None:
    """Add a model to the server's model directory."""
    from api.models_dir.service import ModelSourceError, add_model

    settings = settings_for(data_dir)
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

    settings = settings_for(data_dir)
    models = list_models(settings)
    if not models:
        typer.echo(f"no models in {settings.resolved_models_dir} (add one with `alignd models add NAME SOURCE`)")
        return
    for model in models:
        kind = "adapter" if model.adapter else "model"
        typer.echo(f"{model.name}\t{kind}\t{model.bytes / 1e6:.1f} MB")
