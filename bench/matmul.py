"""How fast can this machine multiply fp32 matrices? The ceiling the trainers' FLOP/s are held against.

    python bench/matmul.py [--seconds 2]        # prints GFLOP/s per shape, writes bench/out/matmul.json

Times `torch.matmul` in fp32 with torch's default thread count on the shapes a SmolLM2-135M training
step multiplies (hidden 576, MLP 1536, vocabulary 49152, T = 1024 tokens in a row): each shape runs
for about `seconds` after one warm-up call, and 2 * M * K * N FLOPs per call give GFLOP/s. The
machine's limit is the best shape's rate: a dense fp32 GEMM is the fastest thing a training step
does, so a trainer's achieved model FLOP/s over this is how far it is from what the CPU can do.

Model FLOPs (stated in every report): 6 * P * T for a training step over T real (non-padding)
tokens, 2 * P * T for a forward-only pass (reference log-probs, evaluation, generation), with P the
parameters that take part in a matmul per token (harness.matmul_params). Attention's T^2 term and
gradient-checkpointing recomputation are not counted, so the fraction is a lower bound of the work
the CPU did and an upper bound of nothing. With LoRA the backward pass skips the frozen weights'
gradients (about 4 * P * T of real work), but 6 * P * T is still what is credited, as is usual.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

SHAPES = [  # (M, K, N): T x hidden @ hidden x out
    (1024, 576, 576),  # attention q/o projections
    (1024, 576, 1536),  # MLP up/gate
    (1024, 1536, 576),  # MLP down
    (1024, 576, 49152),  # LM head over the vocabulary
]


def measure(seconds: float = 2.0) -> dict[str, Any]:
    """fp32 GFLOP/s per shape and the best of them (`limit_gflops`), with the thread count used."""
    import torch

    torch.manual_seed(0)
    rates = {}
    for m, k, n in SHAPES:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)  # warm-up
        calls, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds / len(SHAPES) or calls < 3:
            torch.matmul(a, b)
            calls += 1
        rates[f"{m}x{k}x{n}"] = 2 * m * k * n * calls / elapsed / 1e9
    return {"threads": torch.get_num_threads(), "gflops": rates, "limit_gflops": max(rates.values())}


def fraction(model_flops_per_s: float | None, limit_gflops: float) -> float | None:
    """Achieved model FLOP/s as a fraction of the measured matmul limit."""
    if model_flops_per_s is None:
        return None
    return model_flops_per_s / (limit_gflops * 1e9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "matmul.json")
    args = parser.parse_args()
    result = measure(args.seconds)
    for shape, rate in result["gflops"].items():
        print(f"{shape:>18}: {rate:8.1f} GFLOP/s fp32")
    print(f"limit (best shape): {result['limit_gflops']:.1f} GFLOP/s on {result['threads']} threads")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
