"""The planner's predicted peak GPU memory beside the measured peak of real GPU runs.

    PYTHONPATH=. python bench/plan_gpu_compare.py RUNS.json [--gpu H100] [--json]

RUNS.json: {"runs": [{"algorithm": "dpo", "spec": {...}, "model_config": "path/to/config.json",
"peak_gpu_mb": 1234.5}, ...]}: `spec` is the trainer spec the run used (trainer.config.TrainSpec's
shape: hyperparameters, lora, reward), `model_config` the policy's Hugging Face config.json, and
`peak_gpu_mb` what the run measured (e.g. its largest `peak_memory_mb`). Each run is planned on one CUDA
GPU of the given kind in bf16 (precision auto), with the job's hyperparameters and the trainer's defaults
filled in, exactly as job creation plans a job (api.plan.estimate.job_plan_input). A model reward
component is planned from its own config.json when `<model>/config.json` is readable here, else as a
model of the policy's shape (said in the notes).

Printed per run: the predicted peak with the planner's 1 GiB allowance for the CUDA context and
allocator slack, the same without it (what torch.cuda.max_memory_allocated can see: the context is
outside PyTorch's allocator), the measured figure and measured / predicted for both.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 2**20


def data_lengths(run: dict[str, Any], tokenizer_dir: Path) -> Any:
    """The token lengths of the run's train file as a length-aware plan measures them (api/plan/lengths.py:
    the same renderer and a seeded sample of at most 2,000 rows), or None when the file is not here."""
    from api.plan.lengths import measure_rows, sample_offsets
    from trainer.formats import detect_format
    from trainer.models import load_tokenizer

    path = Path(str((run.get("spec") or {}).get("train_file", "")))
    if not path.is_file():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = [json.loads(lines[i]) for i in sample_offsets(len(lines))]
    tokenizer = load_tokenizer(str(tokenizer_dir))
    return measure_rows(tokenizer, rows, detect_format(rows[0]), path.name, str(tokenizer_dir), len(lines))


def predict(
    run: dict[str, Any], gpu: str = "H100", prompt_length: int | None = None, tokenizer_dir: Path | None = None
) -> dict[str, Any]:
    """The planner's answer for one run on one GPU of kind `gpu` (bf16), with notes on what was assumed.

    `prompt_length`: plan GRPO/PPO at prompts of at most this many tokens (the longest prompt of the run's
    data) instead of `max_prompt_length`; job creation cannot know it, a comparison with a real run can.
    `tokenizer_dir`: plan every algorithm at its train file's token lengths (a length-aware plan).
    """
    from api.plan.estimate import Hardware, Lora, estimate_plan, job_plan_input, shape_from_config
    from api.plan.lengths import at_data_lengths
    from trainer.config import parse_hyperparameters

    algorithm = run["algorithm"]
    spec = run.get("spec") or {}
    config_path = Path(run["model_config"])
    shape = shape_from_config(json.loads(config_path.read_text()))
    hyperparameters = parse_hyperparameters(algorithm, spec.get("hyperparameters") or {}).model_dump()
    if prompt_length and algorithm in ("grpo", "ppo"):
        hyperparameters["max_prompt_length"] = min(prompt_length, hyperparameters["max_prompt_length"])
    lora = spec.get("lora")
    lora_input = (
        Lora(lora.get("r", 16), lora.get("target_modules", "all-linear"), lora.get("dropout", 0.05)) if lora else None
    )
    notes: list[str] = []
    reward_shapes = []
    for component in spec.get("reward") or []:
        if component.get("type") != "model":
            continue
        rm_config = Path(str(component.get("model", ""))) / "config.json"
        if rm_config.is_file():
            reward_shapes.append(shape_from_config(json.loads(rm_config.read_text())))
        else:
            reward_shapes.append(shape)
            notes.append(f"reward model {component.get('model')!r}: no config.json here, planned as the policy's shape")
    x = job_plan_input(shape, hyperparameters, lora_input, reward_shapes)
    if tokenizer_dir is not None:
        lengths = data_lengths(run, tokenizer_dir)
        if lengths is None:
            notes.append("train file not here: planned at the caps")
        else:
            x = at_data_lengths(algorithm, x, lengths)
            online = algorithm in ("grpo", "ppo")
            planned = (
                f"prompt {x.max_prompt_length} + {x.max_new_tokens} new"
                if online
                else f"sequence {x.max_length}, completion {x.max_length - x.max_prompt_length}"
            )
            notes.append(f"planned at the train file's lengths ({lengths.rows_measured} rows): {planned}")
    plan = estimate_plan(algorithm, x, Hardware.gpu(gpu, precision="bf16"))
    return {"plan": plan, "notes": notes + plan["notes"]}


def compare(
    runs: list[dict[str, Any]], gpu: str = "H100", prompt_length: int | None = None, tokenizer_dir: Path | None = None
) -> list[dict[str, Any]]:
    rows = []
    for i, run in enumerate(runs):
        answer = predict(run, gpu, prompt_length, tokenizer_dir)
        memory = answer["plan"]["memory"]
        predicted = memory["peak_bytes"] / MIB
        without_overhead = (memory["peak_bytes"] - memory["overhead_bytes"]) / MIB
        measured = float(run["peak_gpu_mb"])
        rows.append(
            {
                "run": run.get("name") or f"{i + 1}",
                "algorithm": run["algorithm"],
                "gradient_checkpointing": answer["plan"]["gradient_checkpointing"],
                "predicted_mb": round(predicted, 1),
                "predicted_without_overhead_mb": round(without_overhead, 1),
                "measured_mb": measured,
                "ratio": round(measured / predicted, 3),
                "ratio_without_overhead": round(measured / without_overhead, 3) if without_overhead else None,
                "breakdown_mb": {k: round(v / MIB, 1) for k, v in memory.items() if k.endswith("_bytes")},
                "notes": answer["notes"],
            }
        )
    return rows


def table(rows: list[dict[str, Any]], gpu: str) -> str:
    lines = [
        f"Planned on one {gpu}, bf16; ratio = measured / predicted (1 GiB CUDA allowance included, then left out).",
        "",
        "| run | algorithm | checkpointing | predicted MB | predicted MB, no allowance | measured MB | ratio "
        "| ratio, no allowance |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['algorithm']} | {'on' if r['gradient_checkpointing'] else 'off'} "
            f"| {r['predicted_mb']:.0f} | {r['predicted_without_overhead_mb']:.0f} | {r['measured_mb']:.0f} "
            f"| {r['ratio']:.2f} | {r['ratio_without_overhead']:.2f} |"
        )
    notes = sorted({f"{r['run']}: {n}" for r in rows for n in r["notes"]})
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, help="JSON file: {'runs': [{algorithm, spec, model_config, peak_gpu_mb}]}")
    parser.add_argument("--gpu", default="H100", help="GPU kind of the planner's table (H100, H200, A100-80GB, ...)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    parser.add_argument(
        "--prompt-length", type=int, help="GRPO/PPO: plan at prompts of this many tokens (the data's longest)"
    )
    parser.add_argument(
        "--data-lengths",
        type=Path,
        metavar="TOKENIZER_DIR",
        help="plan each run at its train file's token lengths through this tokenizer (a length-aware plan)",
    )
    args = parser.parse_args()
    rows = compare(json.loads(args.runs.read_text())["runs"], args.gpu, args.prompt_length, args.data_lengths)
    print(json.dumps(rows, indent=1) if args.json else table(rows, args.gpu))


if __name__ == "__main__":
    main()
