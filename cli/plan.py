"""`alignd plan`: memory, fit and step time of algorithms on a base model and hardware (POST /v1/plan's planner).

Runs the planner locally: the base model is a name in the model directory of --data-dir, a hub id whose
config.json is in the hub cache, or (on the operator's own machine) a local folder with a config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.data_dir import DataDir, settings_for


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def plan_command(
    base_model: Annotated[
        str, typer.Argument(help="Model-directory name, hub id, or a local folder with config.json.")
    ],
    algorithm: Annotated[
        list[str], typer.Option("--algorithm", "-a", help="dpo, reward, sft, grpo or ppo (repeat for several).")
    ],
    gpu: Annotated[
        str | None, typer.Option(help="GPU kind: H100, H200, A100-80GB, A100-40GB, L40S, L4, A10G, T4, 'RTX 4090'.")
    ] = None,
    gpus: Annotated[int, typer.Option(help="How many GPUs.")] = 1,
    cpu_memory_gb: Annotated[
        float | None, typer.Option(help="Plan for this CPU machine's RAM (GiB) instead of GPUs.")
    ] = None,
    cpu_flops: Annotated[float | None, typer.Option(help="The CPU's FLOP/s (measured here when left out).")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (full fine-tuning when left out).")] = None,
    lora_targets: Annotated[
        str, typer.Option(help="LoRA target modules, comma-separated, or all-linear.")
    ] = "all-linear",
    precision: Annotated[str, typer.Option(help="fp32 or bf16.")] = "bf16",
    max_length: Annotated[int, typer.Option()] = 1024,
    max_prompt_length: Annotated[int, typer.Option()] = 512,
    max_new_tokens: Annotated[int, typer.Option()] = 128,
    batch_size: Annotated[int, typer.Option()] = 8,
    micro_batch_size: Annotated[int | None, typer.Option()] = None,
    num_generations: Annotated[int, typer.Option()] = 8,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--gradient-checkpointing/--no-gradient-checkpointing",
            help="Default: as a job's (auto for dpo/reward/sft: only when needed to fit; off for grpo/ppo).",
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option(help="What you have: preference_pairs, reward_model or verifiable_rules.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="A stored dataset id: plan at its rows' token lengths (needs --tenant, its owner)."),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The tenant (name) that owns --dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the planner's JSON answer.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Plan before you train: models in memory, bytes, fit, largest micro-batch and time per step."""
    from pydantic import ValidationError

    from api.core.errors import AlignError
    from api.core.validation import invalid_from_pydantic
    from api.plan import service
    from api.plan.schemas import PlanRequest

    settings = settings_for(data_dir)
    hardware: dict[str, Any] = (
        {"kind": "cpu", "memory_gb": cpu_memory_gb, **({"flops": cpu_flops} if cpu_flops else {})}
        if cpu_memory_gb is not None
        else {"kind": "gpu", "gpu": gpu, "count": gpus}
    )
    body: dict[str, Any] = {
        "base_model": base_model,
        "algorithms": algorithm,
        "precision": precision,
        "max_length": max_length,
        "max_prompt_length": max_prompt_length,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "micro_batch_size": micro_batch_size,
        "num_generations": num_generations,
        "gradient_checkpointing": gradient_checkpointing,
        "data": data,
        "dataset_id": dataset,
        "hardware": hardware,
    }
    if lora_r is not None:
        targets: Any = lora_targets if lora_targets == "all-linear" else [t.strip() for t in lora_targets.split(",")]
        body["lora"] = {"r": lora_r, "target_modules": targets}
    folder = Path(base_model).expanduser()
    try:
        request = PlanRequest.model_validate(body, strict=False)
        config = service.read_config_file(folder / "config.json") if (folder / "config.json").is_file() else None
        measured = _dataset_lengths(settings, request, tenant) if dataset is not None else None
        answer = service.plan(settings, request, config, measured)
    except ValidationError as exc:
        typer.echo(f"error: {invalid_from_pydantic(exc).message}", err=True)
        raise typer.Exit(2) from exc
    except AlignError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(answer.model_dump(), indent=2))
        return
    _print(answer)


def _dataset_lengths(settings: Any, request: Any, tenant: str | None) -> Any:
    """The token lengths of `request.dataset_id`, read as its owner `tenant` would (404 for anyone else's)."""
    import asyncio

    from sqlalchemy import select

    from api.auth.models import Tenant
    from api.auth.service import TenantNotFound
    from api.core.db import get_sessionmaker
    from api.core.errors import InvalidRequest
    from api.plan import lengths

    if tenant is None:
        raise InvalidRequest("--dataset needs --tenant: the name of the tenant that owns the dataset")
    session = get_sessionmaker()()
    row = session.execute(select(Tenant).where(Tenant.name == tenant)).scalar_one_or_none()
    if row is None:
        session.close()
        raise TenantNotFound(f"no tenant {tenant!r}")
    return asyncio.run(lengths.dataset_lengths(session, settings, row.id, request.dataset_id, request.base_model))


def _print(answer: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=160)
    hw = answer.hardware
    title = (
        f"{answer.model.ref}: {answer.model.params / 1e6:.1f} M params on "
        f"{hw.count} x {hw.name} ({_gib(hw.memory_bytes)} GiB each)"
    )
    table = Table(title=title)
    for column in (
        "algorithm",
        "models",
        "weights",
        "grads+optim",
        "activations",
        "logits",
        "KV cache",
        "peak GiB",
        "fits",
        "max micro",
        "s/step",
    ):
        table.add_column(column, justify="left" if column in ("algorithm", "models") else "right")
    for plan in answer.plans:
        m = plan.memory
        models = ", ".join(x.role for x in plan.models if x.weights_bytes or x.trainable_params)
        table.add_row(
            plan.algorithm,
            models,
            _gib(m.weights_bytes),
            _gib(m.gradients_bytes + m.optimizer_bytes),
            _gib(m.activations_bytes),
            _gib(m.logits_bytes),
            _gib(m.kv_cache_bytes),
            _gib(m.peak_bytes),
            "yes" if plan.fits else "no",
            str(plan.largest_micro_batch_size or "-"),
            f"{plan.time.seconds_per_step:.3g}",
        )
    console.print(table)
    if answer.dataset is not None:
        d = answer.dataset
        measured = f"{d.rows_measured} of {d.rows} rows" + (" (a sample)" if d.sampled else "")
        console.print(f"dataset {d.id}: {measured} tokenised; percentiles p50/p90/p99/max:")
        for label, p in (("prompt", d.prompt_tokens), ("completion", d.completion_tokens), ("row", d.sequence_tokens)):
            if p is not None:
                console.print(f"  {label}: {p.p50}/{p.p90}/{p.p99}/{p.max} tokens")
        for x in d.planned:
            console.print(f"  {x.algorithm} planned at {x.sequence_tokens} tokens ({x.completion_tokens} completion)")
    for plan in answer.plans:
        held = "; ".join(f"{x.role}: {x.kind} ({_gib(x.weights_bytes)} GiB)" for x in plan.models)
        console.print(f"{plan.algorithm}: {held}")
    rec = answer.recommendation
    console.print(f"recommendation: {rec.text}")
    for reason in rec.reasons:
        console.print(f"  - {reason}")
    for plan in answer.plans:
        for note in plan.notes:
            console.print(f"note ({plan.algorithm}): {note}")
    console.print("assumptions: " + "; ".join(answer.assumptions), style="dim")
