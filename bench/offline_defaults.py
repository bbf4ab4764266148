"""What each memory default costs and saves: DPO on real Orca pairs with SmolLM2-135M, LoRA r16, one run per setting.

    PYTHONPATH=. .venv/bin/python bench/offline_defaults.py MODEL_DIR [--pairs 16] [--steps 4] [--baseline-root DIR]

Runs `python -m trainer run` once per variant (each its own process, so peak RSS is per run) at the issue's
settings: 4 pairs per optimizer step, max_length 256 (max_prompt_length 128), LoRA r16 all-linear, fp32,
reference log-probs precomputed. Variants switch gradient checkpointing and padding-free one at a time;
`--baseline-root` adds a run of another checkout (e.g. main before chunked log-probs existed) at its defaults.
Prints peak RSS (MB), the mean step time over the steps after the first, and the end-to-end seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "orca-dpo-pairs.openai-dpo.jsonl"

VARIANTS: dict[str, dict[str, object]] = {
    "chunked log-probs, checkpointing, padding-free": {"padding_free": True},
    "defaults now (chunked log-probs, checkpointing, padded)": {},
    "chunked log-probs, padding-free, no checkpointing": {"padding_free": True, "gradient_checkpointing": False},
    "chunked log-probs only (padded, no checkpointing)": {"gradient_checkpointing": False},
}


def run(root: Path, model: str, train: Path, steps: int, hyper: dict[str, object], work: Path) -> dict[str, float]:
    spec = {
        "algorithm": "dpo",
        "base_model": model,
        "train_file": str(train),
        "lora": {"r": 16, "alpha": 32},
        "seed": 0,
        "hyperparameters": {
            "learning_rate": 5e-5,
            "batch_size": 4,
            "max_steps": steps,
            "max_length": 256,
            "max_prompt_length": 128,
            "precision": "fp32",
            **hyper,
        },
    }
    spec_path, events = work / "spec.json", work / "events.jsonl"
    spec_path.write_text(json.dumps(spec))
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "trainer", "run", str(spec_path), "--output", str(work / "out")]
    cmd += ["--events", str(events)]
    proc = subprocess.run(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"exit code {proc.returncode}: {proc.stderr[-3000:]}")
    metrics = [e["values"] for e in map(json.loads, events.read_text().splitlines()) if e["type"] == "metrics"]
    return {
        "peak_rss_mb": max(m["peak_memory_mb"] for m in metrics),
        "step_time_s": statistics.mean(m["step_time"] for m in metrics[1:]),
        "end_to_end_s": seconds,
        "losses": [round(m["loss"], 4) for m in metrics],  # type: ignore[dict-item]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--baseline-root", type=Path, help="another checkout to run at its own defaults")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = Path(tmp) / "train.jsonl"
        train.write_text("".join(DATA.read_text().splitlines(keepends=True)[: args.pairs]))
        variants = dict(VARIANTS)
        roots = {name: ROOT for name in variants}
        if args.baseline_root:
            variants = {"baseline (its defaults)": {}, **variants}
            roots["baseline (its defaults)"] = args.baseline_root
        print(f"load before: {os.getloadavg()}")
        for name, hyper in variants.items():
            work = Path(tmp) / str(len(list(Path(tmp).iterdir())))
            work.mkdir()
            result = run(roots[name], args.model, train, args.steps, hyper, work)
            print(f"{name}: {json.dumps(result)}  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
