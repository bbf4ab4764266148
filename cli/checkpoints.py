"""`alignd checkpoints list|download`: checkpoints on a running server, through the client."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.remote import ApiKey, JsonOutput, Url, connect, console, print_json, transfer_bar

checkpoints_app = typer.Typer(
    help="Checkpoints on a running server (ALIGND_URL / ALIGND_API_KEY).", no_args_is_help=True
)


@checkpoints_app.command("list")
def list_checkpoints(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """A job's checkpoints."""
    with connect(url, api_key) as alignd:
        checkpoints = alignd.checkpoints.list(job_id)
    if json_output:
        print_json(checkpoints)
        return
    table = Table("id", "step", "kind", "bytes", "sha256")
    for c in checkpoints:
        table.add_row(c.id, str(c.step), c.kind, str(c.bytes), c.sha256)
    console.print(table)


@checkpoints_app.command("download")
def download(
    checkpoint_id: Annotated[str, typer.Argument(help="The checkpoint's id (a job's output_checkpoint_id).")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Archive path (default: ID.tar).")] = None,
    extract: Annotated[
        Path | None, typer.Option("--extract", help="Also unpack it into this folder (from_pretrained loads it).")
    ] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Download a checkpoint (resumed after an interruption, sha256 verified), optionally unpacked."""
    with (
        connect(url, api_key) as alignd,
        transfer_bar() as bar,
    ):
        task = bar.add_task(f"downloading {checkpoint_id}", total=None)
        got = alignd.checkpoints.download(
            checkpoint_id,
            output,
            extract_to=extract,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    if json_output:
        print_json(
            {
                "path": str(got.path),
                "sha256": got.sha256,
                "bytes": got.bytes,
                "extracted_to": str(got.extracted_to) if got.extracted_to else None,
            }
        )
        return
    console.print(f"downloaded {got.path} ({got.bytes} bytes), sha256 {got.sha256} verified")
    if got.extracted_to:
        console.print(f"extracted to {got.extracted_to}")
