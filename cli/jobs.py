"""`alignd jobs create|list|get|cancel|pause|resume|watch`: jobs on a running server, through the client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cli.remote import ApiKey, JsonOutput, Url, call_and_show, connect, console, print_json, stderr
from client import Client, Event, Job

jobs_app = typer.Typer(help="Jobs on a running server (ALIGND_URL / ALIGND_API_KEY).", no_args_is_help=True)

EXIT_CODES = {"succeeded": 0, "failed": 1, "cancelled": 2}
"""`alignd jobs watch` exits with the job's final status."""

KEY_METRICS = (
    "loss",
    "reward",
    "rewards/accuracies",
    "rewards/margins",
    "accuracy",
    "margin",
    "kl",
    "objective/scores",
    "objective/kl",
    "loss/policy",
    "loss/value",
)
"""Shown beside the progress bar, in this order, when the job reports them (at most four)."""


def _pairs(values: list[str], option: str) -> dict[str, Any]:
    """`key=value` flags; values are read as JSON when they parse (numbers, true/false, lists), else as text."""
    out: dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint=option)
        try:
            out[key] = json.loads(raw)
        except ValueError:
            out[key] = raw
    return out


def _request_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--file") from exc
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{path} must hold one mapping (a job request)", param_hint="--file")
    return data


@jobs_app.command("create")
def create(
    file: Annotated[
        Path | None, typer.Option("--file", "-f", exists=True, dir_okay=False, help="A job request as JSON or YAML.")
    ] = None,
    algorithm: Annotated[str | None, typer.Option(help="dpo, reward, sft, grpo, ppo or evaluate.")] = None,
    base_model: Annotated[
        str | None, typer.Option(help="MODEL_REF: a server model name, hub id, job:ID, checkpoint:ID.")
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="evaluate: a MODEL_REF scored after the base model (repeatable, at most 8)."),
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Training dataset id.")] = None,
    eval_dataset: Annotated[str | None, typer.Option("--eval-dataset", help="Held-out dataset id.")] = None,
    reward_model: Annotated[str | None, typer.Option("--reward-model", help="Reward model id (grpo, ppo).")] = None,
    hp: Annotated[list[str] | None, typer.Option("--hp", help="A hyperparameter, KEY=VALUE (repeatable).")] = None,
    lora_r: Annotated[
        int | None, typer.Option(help="LoRA rank (LoRA is off unless a --lora-* option is given).")
    ] = None,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha.")] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout.")] = None,
    lora_target: Annotated[list[str] | None, typer.Option(help="LoRA target module (repeatable).")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    name: Annotated[str | None, typer.Option(help="A name for the job.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="KEY=VALUE kept with the job (repeatable).")
    ] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Default: a fresh uuid4 (retries stay safe).")] = None,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Submit a job from flags, from a JSON/YAML file, or both (flags override the file)."""
    request = _request_file(file) if file else {}
    flags = {
        "algorithm": algorithm,
        "base_model": base_model,
        "dataset_id": dataset,
        "eval_dataset_id": eval_dataset,
        "reward_model_id": reward_model,
        "seed": seed,
        "name": name,
    }
    request.update({k: v for k, v in flags.items() if v is not None})
    if model:
        request["models"] = [*(request.get("models") or []), *model]
    if hp:
        request["hyperparameters"] = {**(request.get("hyperparameters") or {}), **_pairs(hp, "--hp")}
    if metadata:
        request["metadata"] = {
            k: str(v) for k, v in {**(request.get("metadata") or {}), **_pairs(metadata, "--metadata")}.items()
        }
    lora = {"r": lora_r, "alpha": lora_alpha, "dropout": lora_dropout, "target_modules": lora_target or None}
    if any(v is not None for v in lora.values()):
        request["lora"] = {**(request.get("lora") or {}), **{k: v for k, v in lora.items() if v is not None}}
    missing = [
        flag
        for flag, key in (("--algorithm", "algorithm"), ("--base-model", "base_model"), ("--dataset", "dataset_id"))
        if not request.get(key)
    ]
    if missing:
        raise typer.BadParameter(f"give {', '.join(missing)} (as flags or in --file)")
    with connect(url, api_key) as alignd:
        job = alignd.jobs.create_from(request, idempotency_key=idempotency_key)
    if json_output:
        print_json(job)
    else:
        console.print(f"created {job.id} ({job.algorithm} on {job.base_model}): {job.status}")


@jobs_app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(help="Only jobs with this status.")] = None,
    algorithm: Annotated[str | None, typer.Option(help="Only jobs of this algorithm.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 20,
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """List jobs, newest first."""
    with connect(url, api_key) as alignd:
        pages = alignd.jobs.list(status=status, algorithm=algorithm, page_size=min(limit, 100))
        jobs = [job for job, _ in zip(pages, range(limit), strict=False)]
    if json_output:
        print_json(jobs)
        return
    table = Table("id", "name", "algorithm", "status", "step", "created")
    for job in jobs:
        step = f"{job.progress.step}/{job.progress.total_steps or '?'}"
        table.add_row(
            job.id, job.name or "", job.algorithm, job.status, step, job.created_at.isoformat(timespec="seconds")
        )
    console.print(table)


@jobs_app.command("get")
def get(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Show a job: status, progress, latest metrics, error, output checkpoint."""
    with connect(url, api_key) as alignd:
        job = alignd.jobs.get(job_id)
    if json_output:
        print_json(job)
        return
    rows = {
        "id": job.id,
        "name": job.name or "",
        "algorithm": job.algorithm,
        "status": job.status,
        "base model": job.base_model,
        "dataset": job.dataset_id,
        "progress": f"step {job.progress.step}/{job.progress.total_steps or '?'}",
        "metrics": _metrics_text(job.metrics, limit=len(KEY_METRICS)),
        "error": f"{job.error.code}: {job.error.message}" if job.error else "",
        "output checkpoint": job.output_checkpoint_id or "",
        "created": job.created_at.isoformat(timespec="seconds"),
    }
    table = Table(show_header=False, box=None)
    for key, value in rows.items():
        table.add_row(f"[bold]{key}[/bold]", value)
    console.print(table)
    if job.results:
        console.print(_results_table(job.results))


def _results_table(results: dict[str, dict[str, Any]]) -> Table:
    """An evaluate job's results: one row per model, one column per eval/ metric."""
    names = sorted({name for values in results.values() for name in values})
    table = Table("model", *[name.removeprefix("eval/") for name in names])
    for model, values in results.items():
        cells = [f"{values[n]:.4g}" if isinstance(values.get(n), int | float) else "" for n in names]
        table.add_row(model, *cells)
    return table


def _print_status(job: Job) -> None:
    console.print(f"{job.id}: {job.status}")


@jobs_app.command("cancel")
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Cancel a job (queued: at once; running: the trainer is stopped, its checkpoints stay)."""
    call_and_show(url, api_key, json_output, lambda alignd: alignd.jobs.cancel(job_id), _print_status)


@jobs_app.command("pause")
def pause(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Pause a job (queued: at once; running: saved at the next step boundary, then `paused`)."""
    call_and_show(url, api_key, json_output, lambda alignd: alignd.jobs.pause(job_id), _print_status)


@jobs_app.command("resume")
def resume(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Resume a paused job: it is queued again and continues from its latest checkpoint."""
    call_and_show(url, api_key, json_output, lambda alignd: alignd.jobs.resume(job_id), _print_status)


@jobs_app.command("watch")
def watch(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: Url = None,
    api_key: ApiKey = None,
    json_output: JsonOutput = False,
) -> None:
    """Follow a job live (events over SSE): a progress bar with step, ETA and key metrics.

    Exit code: 0 succeeded, 1 failed, 2 cancelled.
    """
    with connect(url, api_key) as alignd:
        job = _follow(alignd, alignd.jobs.get(job_id))
        if not job.is_final:  # the stream ends only once the job is final; make sure of it
            job = alignd.jobs.wait(job_id)
    if json_output:
        print_json(job)
    else:
        console.print(f"{job.id} {job.status}" + (f" at step {job.progress.step}" if job.progress.step else ""))
        if job.error:
            console.print(f"[red]{job.error.code}:[/red] {job.error.message}")
        if job.output_checkpoint_id:
            ckpt = job.output_checkpoint_id
            console.print(f"output checkpoint: {ckpt} (alignd checkpoints download {ckpt})")
    raise typer.Exit(EXIT_CODES.get(job.status, 1))


def _follow(alignd: Client, job: Job) -> Job:
    """Draw the job's progress from its event stream until the stream ends; returns the job as last fetched."""
    metrics: dict[str, Any] = dict(job.metrics)
    refreshed = time.monotonic()
    columns = (
        TextColumn("[bold]{task.fields[status]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[metrics]}"),
    )
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task(
            job.id,
            total=job.progress.total_steps,
            completed=job.progress.step,
            status=job.status,
            metrics=_metrics_text(metrics),
        )
        for event in alignd.jobs.stream_events(job.id):
            if event.type == "metrics":
                metrics.update(event.data.get("values") or {})
                step = int(event.data.get("step") or 0)
                if job.progress.total_steps is None or time.monotonic() - refreshed > 5:
                    job, refreshed = alignd.jobs.get(job.id), time.monotonic()  # total_steps is not an event
                bar.update(task, completed=step, total=job.progress.total_steps, metrics=_metrics_text(metrics))
            elif event.type == "status":
                bar.update(task, status=event.data.get("status", ""))
                bar.console.print(f"status -> {event.data.get('status')}")
            elif event.type in ("log", "checkpoint"):
                bar.console.print(_event_line(event), markup=False)
        job = alignd.jobs.get(job.id)
        bar.update(
            task, completed=job.progress.step, total=job.progress.total_steps or job.progress.step, status=job.status
        )
    return job


def _metrics_text(metrics: dict[str, Any], limit: int = 4) -> str:
    shown = [(k, metrics[k]) for k in KEY_METRICS if isinstance(metrics.get(k), int | float)][:limit]
    return "  ".join(f"{k} {v:.4g}" for k, v in shown)


def _event_line(event: Event) -> str:
    if event.type == "log":
        return f"log: {event.data.get('message')}"
    return f"checkpoint at step {event.data.get('step')} ({event.data.get('kind', 'intermediate')})"
