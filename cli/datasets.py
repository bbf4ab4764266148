"""`alignd datasets upload|list|get|rows`: datasets on a running server, through the client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.remote import ApiKey, JsonOutput, Url, connect, console, print_json, transfer_bar

datasets_app = typer.Typer(help="Datasets on a running server (ALIGND_URL / ALIGND_API_KEY).", no_args_is_help=True)


@datasets_app.command("upload")
def upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A .jsonl or .jsonl.gz file.")],
    name: Annotated[str | None, typer.Option(help="Name (default: the file name).")] = None,
    format: Annotated[str | None, typer.Option(help="Declare the row format instead of detecting it.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Upload a dataset; invalid lines are listed in a table (exit code 1) and nothing is stored."""
    with (
        connect(url, api_key) as alignd,
        transfer_bar() as bar,
    ):
        task = bar.add_task(f"uploading {file.name}", total=file.stat().st_size)
        dataset = alignd.datasets.upload(
            file, name=name, format=format, progress=lambda sent, total: bar.update(task, completed=sent, total=total)
        )
    if json_output:
        print_json(dataset)
    else:
        console.print(
            f"uploaded {dataset.id} ({dataset.name}): {dataset.rows} rows, kind {dataset.kind}, "
            f"format {dataset.format}, sha256 {dataset.sha256}"
        )


@datasets_app.command("list")
def list_datasets(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """List datasets, newest first."""
    with connect(url, api_key) as alignd:
        datasets = [d for d, _ in zip(alignd.datasets.list(page_size=min(limit, 100)), range(limit), strict=False)]
    if json_output:
        print_json(datasets)
        return
    table = Table("id", "name", "kind", "format", "rows", "created")
    for d in datasets:
        table.add_row(d.id, d.name, d.kind, d.format, str(d.rows), d.created_at.isoformat(timespec="seconds"))
    console.print(table)
