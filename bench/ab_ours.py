"""A/B of OUR trainer end to end: variants (a checkout and hyperparameter overrides) run interleaved.

    PYTHONPATH=. python bench/ab_ours.py --variant main=/work/main --variant new=. \
        [--variant 'new-nockpt=.:{"gradient_checkpointing": false}'] [--algorithm dpo|reward] [--data orca|hh]
        [--lora] [--steps 4] [--batch-size 2] [--max-length 1024] [--eval-pairs 2] [--repeats 2] [--threads N]

The workload is bench/offline_vs_trl.py's "defaults" spec (same rows, model, LoRA); each variant is
`python -m trainer run` from its own checkout, in its own child process, one after the other within a
repeat (A, B, A, B, ...), so a load change on a shared box hits every variant. Reported per run: wall
seconds, CPU seconds of the child (user + system, from wait4: with --threads 1 the comparable number on a
busy box), peak RSS, time before the first step, step times and losses, and the load average at its start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import OUT, read_our_events, smollm2
from offline_vs_trl import our_spec, prepare_rows

EVAL_KEYS = ("loss", "margin", "rewards/margins")


def run_one(root: Path, spec: dict[str, Any], folder: Path, threads: int | None) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    events = folder / "events.jsonl"
    events.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(root), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "trainer", "run", str(folder / "spec.json"), "--output", str(folder / "out")]
    load = os.getloadavg()[0]
    seen: dict[str, float] = {}
    started = time.perf_counter()
    with (folder / "log.txt").open("w") as log:
        proc = subprocess.Popen([*cmd, "--events", str(events)], cwd=root, env=env, stdout=log, stderr=log)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if events.exists():
                for i, line in enumerate(events.read_text().splitlines()):
                    if f"line{i}" not in seen and line.endswith("}"):
                        seen[f"line{i}"] = time.perf_counter() - started
            time.sleep(0.2)
    wall = time.perf_counter() - started
    parsed = read_our_events(events, seen, wall) if events.exists() else {}
    steps = parsed.get("steps", [])
    return {
        "rc": os.waitstatus_to_exitcode(status),
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "load_at_start": round(load, 1),
        **{k: round(v, 1) for k, v in parsed.get("phases", {}).items()},
        "step_times": [round(s["step_time"], 1) for s in steps],
        "losses": [round(s["loss"], 5) for s in steps],
        "eval": {
            k: round(v, 5) for k, v in parsed.get("eval", {}).items() if k in ("loss", "margin", "rewards/margins")
        },
        "errors": parsed.get("errors", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variant",
        action="append",
        required=True,
        help="name=checkout[:json hyperparameter overrides; key lora: LoRA spec overrides]",
    )
    parser.add_argument("--algorithm", choices=["dpo", "reward"], default="dpo")
    parser.add_argument("--data", choices=["orca", "hh"], default="orca")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--eval-pairs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each child")
    args = parser.parse_args()
    variants = []
    for text in args.variant:
        name, _, rest = text.partition("=")
        root, _, extra = rest.partition(":")
        variants.append((name, Path(root).resolve(), json.loads(extra) if extra else {}))
    work = OUT / f"ab_{args.algorithm}_{args.data}"
    work.mkdir(parents=True, exist_ok=True)
    model = smollm2()
    files = prepare_rows(args, work)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in variants}
    for r in range(args.repeats):
        for name, root, extra in variants:
            spec = our_spec(args, "defaults", model, files)
            spec["hyperparameters"] |= {k: v for k, v in extra.items() if k != "lora"}
            if "lora" in extra:
                spec["lora"] = {**spec["lora"], **extra["lora"]}
            res = run_one(root, spec, work / f"{name}-{r}", args.threads)
            results[name].append(res)
            print(f"repeat {r} {name}: {json.dumps(res)}", flush=True)
    (work / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
