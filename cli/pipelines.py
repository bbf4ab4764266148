"""`alignd pipelines create|list|get|cancel|wait`: pipelines on a running server, through the client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from cli.remote import ApiKey, JsonOutput, Url, call_and_show, connect, console, print_json
from client import Pipeline

pipelines_app = typer.Typer(
    help="Pipelines of jobs on a running server (ALIGND_URL / ALIGND_API_KEY).", no_args_is_help=True
)

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}
"""`alignd pipelines wait` exits with the pipeline's final status."""


def _request_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="FILE") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold one mapping (a pipeline request with `stages`)", param_hint="FILE")
    return data


def _show(pipeline: Pipeline) -> None:
    console.print(f"{pipeline.id} {pipeline.name or ''}: {pipeline.status}".replace("  ", " "))
    table = Table("stage", "algorithm", "status", "job", "after", "reason")
    for stage in pipeline.stages:
        table.add_row(
            stage.name,
            stage.algorithm,
            stage.status,
            stage.job_id or "",
            ", ".join(stage.depends_on),
            stage.reason or "",
        )
    console.print(table)
    if pipeline.error:
        console.print(f"error: {pipeline.error.code}: {pipeline.error.message}")
    if pipeline.output_checkpoint_id:
        console.print(f"output checkpoint: {pipeline.output_checkpoint_id}")


@pipelines_app.command("create")
def create(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, help="A pipeline request as JSON or YAML: {name?, metadata?, stages: [...]}."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="A name for the pipeline (wins over the file's).")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Default: a fresh uuid4 (retries stay safe).")] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Submit a pipeline: stages (each a job request) whose inputs may say `stage:<name>`."""
    request = _request_file(file)
    if name is not None:
        request["name"] = name
    with connect(url, api_key) as alignd:
        pipeline = alignd.pipelines.create_from(request, idempotency_key=idempotency_key)
    if json_output:
        print_json(pipeline)
    else:
        _show(pipeline)


@pipelines_app.command("list")
def list_pipelines(
    status: Annotated[str | None, typer.Option(help="Only pipelines with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """List pipelines, newest first."""
    with connect(url, api_key) as alignd:
        pages = alignd.pipelines.list(status=status, page_size=min(limit, 100))
        pipelines = [p for p, _ in zip(pages, range(limit), strict=False)]
    if json_output:
        print_json(pipelines)
        return
    table = Table("id", "name", "status", "stages", "created")
    for p in pipelines:
        stages = " -> ".join(f"{s.name} ({s.status})" for s in p.stages)
        table.add_row(p.id, p.name or "", p.status, stages, p.created_at.isoformat(timespec="seconds"))
    console.print(table)


@pipelines_app.command("get")
def get(
    pipeline_id: Annotated[str, typer.Argument(help="The pipeline's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Show a pipeline: its status, each stage's status and job, its output checkpoint."""
    call_and_show(url, api_key, json_output, lambda alignd: alignd.pipelines.get(pipeline_id), _show)


@pipelines_app.command("cancel")
def cancel(
    pipeline_id: Annotated[str, typer.Argument(help="The pipeline's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Cancel a pipeline: its live stage is cancelled, the stages not started are skipped."""
    call_and_show(url, api_key, json_output, lambda alignd: alignd.pipelines.cancel(pipeline_id), _show)


@pipelines_app.command("wait")
def wait(
    pipeline_id: Annotated[str, typer.Argument(help="The pipeline's id.")],
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Wait for a pipeline to finish; exits 0 succeeded, 1 failed, 2 cancelled."""
    with connect(url, api_key) as alignd:
        pipeline = alignd.pipelines.wait(pipeline_id, timeout=timeout)
    if json_output:
        print_json(pipeline)
    else:
        _show(pipeline)
    raise typer.Exit(EXIT_CODES.get(pipeline.status, 1))
