"""Validate the planner (api/plan/estimate.py) against real trainer runs on this CPU.

    PYTHONPATH=$PWD python bench/plan_validation.py [--sizes small,large] [--algorithms dpo,...] [--write-docs]

For every algorithm at two tiny Llama sizes, and DPO/SFT at a third with a large vocabulary (built here with
tests/tiny.py; SIZES), runs `python -m trainer run`
in its own subprocess on data whose every row is longer than the length budget (so every sequence is
cut to exactly max_length, the planner's worst case) and reads the run's largest `peak_memory_mb`
(on CPU: the process's peak RSS, ru_maxrss). The planner's prediction for the same settings on a
`cpu` hardware description adds the runtime baseline: the peak RSS of a process that imports torch,
transformers, peft and every trainer module and loads the tokenizer, measured once here in its own
subprocess (`measure_baseline_mb`). Writes bench/out/plan_validation.json, prints the table, and with
--write-docs replaces the table in docs/plan.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


SIZES: dict[str, dict[str, int]] = {
    # name: build_tiny_model kwargs (intermediate = 2 x hidden, 4 heads, 2 KV heads, vocab 260)
    "small": {"hidden_size": 64, "num_layers": 2},
    "large": {"hidden_size": 1024, "num_layers": 4},
    # the small model with a Llama-3-sized vocabulary (rows no token uses): the offline log-probs run the
    # head in chunks of 2^24 / V = 128 tokens, so DPO's 8 x 64 completion positions are 4 chunks
    "wide": {"hidden_size": 64, "num_layers": 2, "vocab_size": 131072},
}
WIDE_ALGORITHMS = ("dpo", "sft")
"""What runs at the wide size: the offline algorithms with a vocabulary head (chunked log-probs)."""
ALGORITHMS = ["dpo", "reward", "sft", "grpo", "ppo"]
# One setting for every run: short enough for a 2-core CPU, long enough that activations and logits show.
MAX_LENGTH, MAX_PROMPT, MAX_NEW = 128, 64, 32
BATCH = {"dpo": 4, "reward": 4, "sft": 4, "grpo": 2, "ppo": 4}
NUM_GENERATIONS = 4
STEPS = 2
VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "lora": {"lora": {"r": 16, "target_modules": "all-linear"}},
    "ckpt": {"gradient_checkpointing": True},
    "bf16": {"precision": "bf16"},
}
"""Settings beside full fp32 fine-tuning, run at the large size for dpo, grpo and ppo (--variants)."""
COMPLETION = 56
"""Characters (= tokens) of each completion: with a prompt cut to MAX_PROMPT it nearly fills MAX_LENGTH."""
TOLERANCE_FRACTION, TOLERANCE_MB = 0.10, 50.0
"""A prediction passes when |predicted - measured| <= max(10% of measured, 50 MB) (see docs/plan.md)."""

BASELINE_SCRIPT = """
import resource
import torch, transformers, peft, accelerate  # noqa
import trainer.cli, trainer.dpo, trainer.grpo, trainer.ppo, trainer.reward, trainer.sft, trainer.rewards  # noqa
from trainer.models import load_tokenizer
load_tokenizer({model!r})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


ALLOCATOR = {"mode": "default"}
ALLOCATOR_HELP = """default: glibc as configured. mmap: MALLOC_MMAP_THRESHOLD_=65536, so every tensor of 64 KiB or more
is its own mapping and is returned to the system when freed: RSS then follows live bytes, not the heap's
high-water mark."""


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if ALLOCATOR["mode"] == "mmap":
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def measure_baseline_mb(model: Path) -> float:
    """Peak RSS (MB) of a process that imports the trainer's stack and loads a tokenizer: no model, no data."""
    script = BASELINE_SCRIPT.format(model=str(model))
    out = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _long(text: str, chars: int = 400) -> str:
    """`text` repeated to exactly `chars` characters (one byte-level token each)."""
    return ((text + " ") * (chars // (len(text) + 1) + 1))[:chars]


def write_data(folder: Path) -> dict[str, Path]:
    rows = [
        (f"Question {i}: tell me about the number {i}.", f"The number {i} is fine.", f"No idea about {i}.")
        for i in range(16)
    ]
    files = {
        "preference": [
            {"prompt": _long(p), "chosen": _long(c, COMPLETION), "rejected": _long(r, COMPLETION)} for p, c, r in rows
        ],
        "sft": [
            {
                "messages": [
                    {"role": "user", "content": _long(p)},
                    {"role": "assistant", "content": _long(c, COMPLETION)},
                ]
            }
            for p, c, _ in rows
        ],
        "prompt": [{"prompt": _long(p), "answer": c} for p, c, _ in rows],
    }
    out = {}
    for kind, items in files.items():
        path = folder / f"{kind}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in items))
        out[kind] = path
    return out


def hyperparameters(algorithm: str, variant: str = "full") -> dict[str, Any]:
    hp: dict[str, Any] = {
        "max_steps": STEPS,
        "batch_size": BATCH[algorithm],
        "max_length": MAX_LENGTH,
        "max_prompt_length": MAX_PROMPT,
        "precision": VARIANTS[variant].get("precision", "fp32"),
        "gradient_checkpointing": VARIANTS[variant].get("gradient_checkpointing", False),
    }
    if algorithm in ("grpo", "ppo"):
        hp["max_new_tokens"] = MAX_NEW
    if algorithm == "grpo":
        hp["num_generations"] = NUM_GENERATIONS
    if algorithm == "ppo":
        hp["ppo_epochs"] = 1
    return hp


def run_trainer(
    algorithm: str, model: Path, reward_model: Path, data: dict[str, Path], out: Path, variant: str = "full"
) -> float:
    kind = {"dpo": "preference", "reward": "preference", "sft": "sft", "grpo": "prompt", "ppo": "prompt"}[algorithm]
    spec: dict[str, Any] = {
        "algorithm": algorithm,
        "base_model": str(model),
        "train_file": str(data[kind]),
        "hyperparameters": hyperparameters(algorithm, variant),
        "seed": 0,
    }
    if "lora" in VARIANTS[variant]:
        spec["lora"] = VARIANTS[variant]["lora"]
    if algorithm == "grpo":  # a rule: no reward model in memory
        spec["reward"] = [{"type": "rule", "rule": "length", "target_length": 20}]
    if algorithm == "ppo":  # a reward model of the policy's size
        spec["reward"] = [{"type": "model", "model": str(reward_model)}]
    out.mkdir(parents=True, exist_ok=True)
    spec_file, events = out / "spec.json", out / "events.jsonl"
    spec_file.write_text(json.dumps(spec))
    cmd = [
        sys.executable,
        "-m",
        "trainer",
        "run",
        str(spec_file),
        "--output",
        str(out / "ckpt"),
        "--events",
        str(events),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1800)
    text = events.read_text() if events.exists() else ""
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    peaks = [e["values"]["peak_memory_mb"] for e in lines if e["type"] == "metrics" and "peak_memory_mb" in e["values"]]
    if proc.returncode != 0 or not peaks:
        raise RuntimeError(f"{algorithm} failed ({proc.returncode}): {proc.stderr[-2000:]} {lines[-3:]}")
    return max(peaks)


def predict(algorithm: str, config: dict[str, Any], baseline_mb: float, variant: str = "full") -> dict[str, Any]:
    from api.plan.estimate import Hardware, Lora, PlanInput, estimate_plan, shape_from_config

    shape = shape_from_config(config)
    hp = hyperparameters(algorithm, variant)
    lora = VARIANTS[variant].get("lora")
    plan_input = PlanInput(
        shape=shape,
        precision=hp["precision"],
        lora=Lora(lora["r"], lora["target_modules"]) if lora else None,
        max_length=MAX_LENGTH,
        max_prompt_length=MAX_PROMPT,
        max_new_tokens=MAX_NEW,
        batch_size=hp["batch_size"],
        micro_batch_size=None,
        num_generations=NUM_GENERATIONS,
        gradient_checkpointing=hp["gradient_checkpointing"],
        reward_shapes=[shape] if algorithm == "ppo" else [],
        reward_rules_only=algorithm == "grpo",
        ppo_epochs=1,
    )
    hardware = Hardware.cpu(memory_gb=64, flops=1e11, overhead_mb=baseline_mb)
    return estimate_plan(algorithm, plan_input, hardware)  # type: ignore[arg-type]


def within(predicted: float, measured: float) -> bool:
    return abs(predicted - measured) <= max(TOLERANCE_FRACTION * measured, TOLERANCE_MB)


SETTING = {
    "full": "full, fp32",
    "lora": "LoRA r=16 all-linear, fp32",
    "ckpt": "full, fp32, gradient checkpointing",
    "bf16": "full, bf16",
}


def table(results: list[dict[str, Any]], baseline_mb: float, live: dict[str, Any] | None = None) -> str:
    """The markdown table; `live`: the cache of a run with --allocator mmap (its columns, when measured)."""
    live_measured = (live or {}).get("measured", {})
    live_shift = (live or {}).get("baseline_mb", baseline_mb) - baseline_mb
    lines = [
        f"Runtime baseline (measured once, peak RSS of imports + tokenizer): **{baseline_mb:.0f} MB**"
        + (f" ({baseline_mb + live_shift:.0f} MB with the 64 KiB mmap threshold)." if live else "."),
        "",
        "| algorithm | size | setting | params | predicted MB | measured MB | error | within | "
        "measured MB, 64 KiB mmap threshold | error | within |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        key = f"{r['algorithm']}/{r['size']}" + ("" if r["variant"] == "full" else f"/{r['variant']}")
        predicted, measured = r["predicted_mb"], r["measured_mb"]
        vocab = f", vocab {r['vocab']}" if r.get("vocab", 260) != 260 else ""
        row = (
            f"| {r['algorithm']} | {r['size']} (hidden {r['hidden']}, {r['layers']} layers{vocab}) "
            f"| {SETTING[r['variant']]} "
            f"| {r['params'] / 1e6:.2f} M | {predicted:.0f} | {measured:.0f} "
            f"| {predicted - measured:+.0f} ({100 * (predicted - measured) / measured:+.1f}%) "
            f"| {'yes' if within(predicted, measured) else '**no**'} "
        )
        if key in live_measured:
            lm, lp = live_measured[key], predicted + live_shift
            ok = "yes" if within(lp, lm) else "**no**"
            row += f"| {lm:.0f} | {lp - lm:+.0f} ({100 * (lp - lm) / lm:+.1f}%) | {ok} |"
        else:
            row += "| - | - | - |"
        lines.append(row)
    return "\n".join(lines)


def runs(args: argparse.Namespace, size: str) -> list[tuple[str, str]]:
    """(algorithm, variant) pairs: every algorithm in full fp32, and the variants at the large size (dpo, grpo
    and ppo; gradient checkpointing, the offline algorithms' default, for every algorithm)."""
    chosen = args.algorithms.split(",")
    if size == "wide":
        return [(algorithm, "full") for algorithm in chosen if algorithm in WIDE_ALGORITHMS]
    out = [(algorithm, "full") for algorithm in chosen]
    if size == "large":
        variants = [v for v in args.variants.split(",") if v]
        for v in variants:
            out += [(a, v) for a in ALGORITHMS if a in chosen and (v == "ckpt" or a in ("dpo", "grpo", "ppo"))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,large,wide")
    parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
    parser.add_argument("--variants", default="lora,ckpt,bf16", help="variants run at the large size ('' for none)")
    parser.add_argument("--allocator", choices=["default", "mmap"], default="default", help=ALLOCATOR_HELP)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse measured values from bench/out/plan_validation.json"
    )
    args = parser.parse_args()
    from tests.tiny import build_tiny_model

    ALLOCATOR["mode"] = args.allocator
    cache = (
        ROOT
        / "bench"
        / "out"
        / ("plan_validation.json" if args.allocator == "default" else "plan_validation.mmap.json")
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    saved = json.loads(cache.read_text()) if args.reuse and cache.exists() else {}
    measured: dict[str, float] = dict(saved.get("measured", {}))
    configs: dict[str, Any] = dict(saved.get("configs", {}))
    baseline = saved.get("baseline_mb")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = write_data(tmp)
        for size in args.sizes.split(","):
            model = build_tiny_model(tmp / size / "model", **SIZES[size])
            reward_model = build_tiny_model(tmp / size / "rm", "seqcls", **SIZES[size])
            configs[size] = json.loads((model / "config.json").read_text())
            if baseline is None:
                baseline = measure_baseline_mb(model)
                print(f"baseline: {baseline:.0f} MB", flush=True)
            for algorithm, variant in runs(args, size):
                key = f"{algorithm}/{size}" + ("" if variant == "full" else f"/{variant}")
                if key not in measured:
                    out = tmp / size / f"{algorithm}-{variant}"
                    measured[key] = run_trainer(algorithm, model, reward_model, data, out, variant)
                    print(f"{key}: {measured[key]:.0f} MB", flush=True)
                cache.write_text(
                    json.dumps({"baseline_mb": baseline, "measured": measured, "configs": configs}, indent=1)
                )
    results = []
    for size in args.sizes.split(","):
        for algorithm, variant in runs(args, size):
            plan = predict(algorithm, configs[size], baseline, variant)
            key = f"{algorithm}/{size}" + ("" if variant == "full" else f"/{variant}")
            results.append(
                {
                    "algorithm": algorithm,
                    "size": size,
                    "variant": variant,
                    "hidden": SIZES[size]["hidden_size"],
                    "layers": SIZES[size]["num_layers"],
                    "vocab": configs[size]["vocab_size"],
                    "params": plan["models"][0]["params"],
                    "predicted_mb": plan["memory"]["peak_bytes"] / 2**20,
                    "measured_mb": measured[key],
                    "breakdown_mb": {k: round(v / 2**20, 1) for k, v in plan["memory"].items() if k.endswith("_bytes")},
                }
            )
            print(json.dumps(results[-1]), flush=True)
    cache.write_text(
        json.dumps({"baseline_mb": baseline, "measured": measured, "configs": configs, "results": results}, indent=1)
    )
    live_cache = ROOT / "bench" / "out" / "plan_validation.mmap.json"
    live = json.loads(live_cache.read_text()) if args.allocator == "default" and live_cache.exists() else None
    text = table(results, baseline, live)
    print(text)
    if args.write_docs:
        doc = ROOT / "docs" / "plan.md"
        start, end = "<!-- validation table start -->", "<!-- validation table end -->"
        body = doc.read_text()
        head, _, rest = body.partition(start)
        _, _, tail = rest.partition(end)
        doc.write_text(f"{head}{start}\n{text}\n{end}{tail}")


if __name__ == "__main__":
    main()
