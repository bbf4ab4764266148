"""Plan a training run: read the base model's config.json (never its weights) and run the estimator."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from api.core.errors import InvalidRequest
from api.core.settings import Settings
from api.models_dir.references import CheckpointId, HubId, InvalidModelRef, JobOutput, ModelName, parse
from api.plan.estimate import (
    CPU_RUNTIME_BASELINE_MB,
    GIB,
    GPU_OVERHEAD_BYTES,
    MIB,
    ConfigError,
    Hardware,
    Lora,
    ModelShape,
    PlanInput,
    estimate_plan,
    job_plan_input,
    recommend,
    shape_from_config,
)
from api.plan.lengths import DatasetLengths, at_data_lengths
from api.plan.schemas import PlanHardware, PlanRequest, PlanResponse
from trainer.config import LoraConfig


class JobDoesNotFit(InvalidRequest):
    code = "job_does_not_fit"


def read_config(settings: Settings, ref: str, param: str = "base_model") -> dict[str, Any]:
    """The config.json of a model reference: a model-directory name or a hub id in the hub cache.

    Nothing is downloaded: a hub id whose config.json is not in the server's hub cache is a 422.
    """
    match parse(ref, param):
        case ModelName(name):
            folder = settings.resolved_models_dir / name
            if not folder.is_dir():
                raise InvalidModelRef(
                    f"unknown model {name!r}: not in the server's model directory (see GET /v1/models)", param=param
                )
            path = folder / "config.json"
            if not path.is_file():
                adapter = (
                    " (it is a LoRA adapter: plan its base model)" if (folder / "adapter_config.json").is_file() else ""
                )
                raise InvalidModelRef(f"model {name!r} has no config.json{adapter}", param=param)
        case HubId(repo_id):
            if not settings.allow_hub_models:
                raise InvalidModelRef(f"{repo_id!r}: hub models are disabled on this server", param=param)
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(repo_id, "config.json", cache_dir=settings.hub_cache_dir)
            if not isinstance(found, str):
                raise InvalidModelRef(
                    f"hub model {repo_id!r}: its config.json is not in this server's hub cache (the planner never "
                    "downloads); use a model from GET /v1/models or ask the operator to add it",
                    param=param,
                )
            path = Path(found)
        case JobOutput() | CheckpointId():
            raise InvalidModelRef(
                f"{ref!r}: the planner reads a model-directory name or a hub id; plan the job's base model instead",
                param=param,
            )
    return read_config_file(path, param)


def read_config_file(path: Path, param: str = "base_model") -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidModelRef(f"{path.name} of the model is not readable JSON: {exc}", param=param) from exc
    if not isinstance(config, dict):
        raise InvalidModelRef("the model's config.json is not a JSON object", param=param)
    return config


@lru_cache(maxsize=1)
def measured_cpu_flops() -> float:
    """Peak fp32 FLOP/s of this host: the best of a few 1024 x 1024 matmuls (numpy), measured once."""
    import numpy as np

    n = 1024
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def hardware_of(request: PlanHardware, precision: str) -> tuple[Hardware, list[str]]:
    assumptions: list[str] = []
    if request.kind == "cpu":
        assert request.memory_gb is not None
        flops = request.flops
        if flops is None:
            flops = measured_cpu_flops()
            assumptions.append(f"CPU throughput measured on the API host: {flops / 1e9:.0f} GFLOP/s (fp32 matmul)")
        overhead = request.overhead_mb if request.overhead_mb is not None else CPU_RUNTIME_BASELINE_MB
        hardware = Hardware.cpu(
            request.memory_gb,
            flops,
            overhead,
            bandwidth_gbs=request.bandwidth_gbs or 20.0,
            efficiency=request.efficiency,
        )
        return hardware, assumptions
    assert request.gpu is not None
    hardware = Hardware.gpu(request.gpu, request.count, precision, request.efficiency)  # type: ignore[arg-type]
    changes: dict[str, Any] = {}
    if request.memory_gb is not None:
        changes["memory_bytes"] = int(request.memory_gb * 2**30)
    if request.bandwidth_gbs is not None:
        changes["bandwidth_bytes"] = request.bandwidth_gbs * 1e9
    if request.overhead_mb is not None:
        changes["overhead_bytes"] = request.overhead_mb * MIB
    if changes:
        from dataclasses import replace

        hardware = replace(hardware, **changes)
    return hardware, assumptions


def plan(
    settings: Settings,
    request: PlanRequest,
    config: dict[str, Any] | None = None,
    lengths: DatasetLengths | None = None,
) -> PlanResponse:
    """The planner's answer for `request` (`config`: an already-read config.json, e.g. from the CLI;
    `lengths`: the token lengths of the dataset the request names, api/plan/lengths.py)."""
    if config is None:
        config = read_config(settings, request.base_model)
    shape = _shape(config, "base_model")
    reward_shapes: list[ModelShape] = [
        _shape(read_config(settings, ref, f"reward_models[{i}]"), f"reward_models[{i}]")
        for i, ref in enumerate(request.reward_models)
    ]
    hardware, assumptions = hardware_of(request.hardware, request.precision)
    online = any(a in ("grpo", "ppo") for a in request.algorithms)
    rules_only = False
    if online and not reward_shapes:
        if request.data == "verifiable_rules":
            rules_only = True
            assumptions.append("grpo/ppo reward: rules only (no reward model in memory)")
        else:
            reward_shapes = [shape]
            assumptions.append("grpo/ppo reward: one reward model of the base model's size (name it in reward_models)")
    lora = request.lora
    x = PlanInput(
        shape=shape,
        precision=request.precision,
        lora=Lora(lora.r, lora.target_modules, lora.dropout) if lora else None,
        max_length=request.max_length,
        max_prompt_length=request.max_prompt_length,
        max_new_tokens=request.max_new_tokens,
        batch_size=request.batch_size,
        micro_batch_size=request.micro_batch_size,
        num_generations=request.num_generations,
        gradient_checkpointing=request.gradient_checkpointing,
        padding_free=request.padding_free,
        max_tokens_per_batch=request.max_tokens_per_batch,
        reward_shapes=reward_shapes,
        reward_rules_only=rules_only,
        precompute_ref_logps=request.precompute_ref_logps,
        ppo_value_model=request.value_model,
        ppo_epochs=request.ppo_epochs,
    )
    assumptions += [
        f"a Llama-style decoder ({shape.model_type}): gated MLP, RMSNorm, RoPE",
        (
            "every micro-batch padded to the dataset's longest row as the trainer cuts it (see dataset.planned)"
            if lengths is not None
            else "every sequence at its length budget (max_length; grpo/ppo: max_prompt_length + max_new_tokens)"
        )
        + "; the LM head runs on completion positions only",
        f"step time at {hardware.efficiency:.0%} of peak throughput (and of memory bandwidth while generating)",
    ]
    inputs: dict[str, PlanInput] = {a: at_data_lengths(a, x, lengths) for a in request.algorithms}
    plans = [estimate_plan(a, inputs[a], hardware) for a in request.algorithms]
    return PlanResponse.model_validate(
        {
            "model": {
                "ref": request.base_model,
                "model_type": shape.model_type,
                "params": shape.params(),
                "hidden_size": shape.hidden_size,
                "num_layers": shape.num_layers,
                "vocab_size": shape.vocab_size,
            },
            "hardware": {
                "kind": hardware.kind,
                "name": hardware.name,
                "count": hardware.count,
                "memory_bytes": hardware.memory_bytes,
                "flops": hardware.flops,
                "bandwidth_bytes": hardware.bandwidth_bytes,
                "overhead_bytes": hardware.overhead_bytes,
                "efficiency": hardware.efficiency,
            },
            "plans": plans,
            "recommendation": recommend(request.data, plans, x, hardware),
            "dataset": _dataset_summary(lengths, inputs),
            "assumptions": assumptions,
        }
    )


def _dataset_summary(lengths: DatasetLengths | None, inputs: Mapping[str, PlanInput]) -> dict[str, Any] | None:
    if lengths is None:
        return None
    planned = []
    for algorithm, x in inputs.items():
        online = algorithm in ("grpo", "ppo")
        prompt = x.max_prompt_length
        completion = x.max_new_tokens if online else x.max_length - x.max_prompt_length
        planned.append(
            {
                "algorithm": algorithm,
                "sequence_tokens": prompt + completion,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
            }
        )
    return {
        "id": lengths.dataset_id,
        "rows": lengths.rows,
        "rows_measured": lengths.rows_measured,
        "rows_unreadable": lengths.rows_unreadable,
        "sampled": lengths.sampled,
        "cached": lengths.cached,
        "prompt_tokens": asdict(lengths.prompt_tokens) if lengths.prompt_tokens else None,
        "completion_tokens": asdict(lengths.completion_tokens) if lengths.completion_tokens else None,
        "sequence_tokens": asdict(lengths.sequence_tokens) if lengths.sequence_tokens else None,
        "planned": planned,
    }


def _shape(config: dict[str, Any], param: str) -> ModelShape:
    try:
        return shape_from_config(config)
    except ConfigError as exc:
        raise InvalidModelRef(f"{exc}: the planner needs a decoder's sizes", param=param) from exc


def check_job_fits(
    settings: Settings,
    algorithm: str,
    hyperparameters: dict[str, Any],
    lora: LoraConfig | None,
    base_model: str,
    reward: list[dict[str, Any]] | None,
    lengths: DatasetLengths | None = None,
) -> None:
    """Refuse (422 job_does_not_fit) a job whose planned peak exceeds `worker_gpu_memory_gb`.

    Only what can be planned is refused: a base model whose config.json is not readable here (a
    checkpoint, a hub model not in the hub cache) or not a decoder the planner knows passes unchecked.
    `hyperparameters` are the job's, with defaults filled in; precision auto plans bf16 (a GPU worker).
    `lengths`: the train file's token lengths when a plan already measured them (never measured here: job
    creation does not tokenise), else every sequence at the caps.
    """
    memory_gb = settings.worker_gpu_memory_gb
    if memory_gb is None:
        return
    try:
        shape = shape_from_config(read_config(settings, base_model))
    except (InvalidModelRef, ConfigError):
        return
    reward_shapes: list[ModelShape] = []
    for component in reward or []:
        if component.get("type") == "model":
            try:
                reward_shapes.append(shape_from_config(read_config(settings, str(component["model"]))))
            except (InvalidModelRef, ConfigError):
                continue
    lora_input = Lora(lora.r, lora.target_modules, lora.dropout) if lora else None
    x = at_data_lengths(algorithm, job_plan_input(shape, hyperparameters, lora_input, reward_shapes), lengths)
    worker = Hardware("gpu", "worker GPU", 1, int(memory_gb * GIB), 1e12, 1e12, GPU_OVERHEAD_BYTES)
    answer = estimate_plan(algorithm, x, worker)  # type: ignore[arg-type]
    if answer["fits"]:
        return
    peak = answer["memory"]["peak_bytes"] / GIB
    if answer["largest_micro_batch_size"]:
        fix = f"set hyperparameters.micro_batch_size to {answer['largest_micro_batch_size']} or less"
    elif answer["largest_micro_batch_size_with_checkpointing"]:
        fix = (
            "turn on hyperparameters.gradient_checkpointing with micro_batch_size "
            f"{answer['largest_micro_batch_size_with_checkpointing']} or less"
        )
    else:
        fix = "use LoRA, bf16 or shorter sequences (POST /v1/plan shows the memory of each choice)"
    raise JobDoesNotFit(
        f"this job needs about {peak:.1f} GiB on one GPU but the workers' GPUs have {memory_gb:g} GiB "
        f"(ALIGND_WORKER_GPU_MEMORY_GB); {fix}",
        param="hyperparameters",
    )
