"""What the commands that talk to a running server share: --url / --api-key / --json, and errors.

These commands use the Python client (client/) over HTTP; they need no data directory. The address
and key come from --url / --api-key or ALIGND_URL / ALIGND_API_KEY.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from client import AlignError, APIError, Client

Url = Annotated[
    str | None,
    typer.Option("--url", envvar="ALIGND_URL", help="Server address, e.g. http://127.0.0.1:8000.", show_default=False),
]
ApiKey = Annotated[
    str | None,
    typer.Option("--api-key", envvar="ALIGND_API_KEY", help="API key (alignd keys create).", show_default=False),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts) instead of text.")]

console = Console(highlight=False, soft_wrap=True)
"""stdout: results."""
stderr = Console(stderr=True, highlight=False)
"""stderr: progress bars and errors, so `--json` output stays clean."""


@contextmanager
def connect(url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client for the command; any client error becomes a message on stderr and exit code 1."""
    try:
        with Client(url, api_key=api_key) as alignd:
            yield alignd
    except AlignError as exc:
        fail(exc)


def fail(exc: AlignError) -> None:
    details = exc.details if isinstance(exc, APIError) else []
    stderr.print(f"[red]error:[/red] {exc}", markup=True)
    if details:
        table = Table("line", "field", "message", title=f"{len(details)} problem(s)", title_justify="left")
        for detail in details:
            if isinstance(detail, dict):
                table.add_row(
                    str(detail.get("line", "")), str(detail.get("field") or ""), str(detail.get("message", ""))
                )
            else:
                table.add_row("", "", str(detail))
        stderr.print(table)
    raise typer.Exit(1)


def transfer_bar() -> Progress:
    """A progress bar of bytes sent or received (uploads, downloads), on stderr so --json stays clean."""
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    return Progress(*columns, console=stderr, transient=True)


def print_json(value: BaseModel | Sequence[BaseModel] | dict[str, Any]) -> None:
    if isinstance(value, BaseModel):
        data: Any = value.model_dump(mode="json")
    elif isinstance(value, Sequence):
        data = [item.model_dump(mode="json") for item in value]
    else:
        data = value
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


Shown = TypeVar("Shown", bound=BaseModel)


def call_and_show(
    url: str | None,
    api_key: str | None,
    json_output: bool,
    call: Callable[[Client], Shown],
    show: Callable[[Shown], None],
) -> None:
    """One API call on a fresh connection, its answer printed as JSON (--json) or by `show`."""
    with connect(url, api_key) as alignd:
        answer = call(alignd)
    if json_output:
        print_json(answer)
    else:
        show(answer)
