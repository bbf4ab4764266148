"""Where does one reward-model step's time go? Variants of OUR step on the same HH-RLHF pairs, interleaved.

    PYTHONPATH=. python bench/reward_step_parts.py [--pairs 2] [--skip 0] [--repeats 3] [--threads 1]

SmolLM2-135M-Instruct with a fresh 1-output score head, LoRA r16 all-linear, the pairs bench/offline_vs_trl.py
trains on (HH-RLHF harmless, split at the shared prefix). One step = forward of chosen + rejected, Bradley-Terry
loss, backward. Variants (each repeat runs all, in order): the step as on main before issue 13's offline work
(one padded forward with a KV cache), with use_cache=False, with rows of similar length run apart (the
default now), each with LoRA dropout 0.05 (our LoRA default) and 0 (what TRL trains with: its
disable_dropout), with and without gradient checkpointing. Reports process CPU seconds (the comparable
number on a busy box) and wall seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "bench" / "out" / "smollm2-135m-instruct"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from trainer import packing
    from trainer.config import LoraConfig, RewardConfig
    from trainer.data import encode_preferences
    from trainer.formats import PreferenceExample, RowError, detect_format, iter_rows, parse_row
    from trainer.models import apply_lora, load_model, load_tokenizer
    from trainer.packing import pair_batch
    from trainer.reward import pair_metrics, pair_scores

    tokenizer = load_tokenizer(str(MODEL))
    examples: list[PreferenceExample] = []
    for _, raw in iter_rows(str(ROOT / "data" / "hh-rlhf-harmless-base.jsonl")):
        try:
            examples.append(parse_row(raw, detect_format(raw)))
        except RowError:
            continue
        if len(examples) == args.skip + args.pairs:
            break
    features = encode_preferences(examples[args.skip :], tokenizer, 1024, 512).features
    batch = pair_batch(features, tokenizer.pad_token_id, False)
    print("sequence lengths", batch["attention_mask"].sum(1).tolist(), "padded width", batch["input_ids"].shape[1])

    models: dict[float, Any] = {}
    for dropout in (0.05, 0.0):
        torch.manual_seed(0)
        model = load_model(str(MODEL), "seqcls", pad_token_id=tokenizer.pad_token_id)
        models[dropout] = apply_lora(model, LoraConfig(dropout=dropout), "seqcls").train()

    def step(dropout: float, split: bool, cache: bool, ckpt: bool) -> float:
        model = models[dropout]
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        else:
            model.gradient_checkpointing_disable()
        packing.SPLIT_BY_LENGTH = split
        if cache:  # main before: model_inputs without use_cache
            scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
            chosen, rejected = scores.float().chunk(2)
        else:
            chosen, rejected = pair_scores(model, batch)
        loss, _ = pair_metrics(RewardConfig(), chosen, rejected, None)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return float(loss)

    variants = {
        "before (padded, cache)": dict(dropout=0.05, split=False, cache=True, ckpt=True),
        "no cache": dict(dropout=0.05, split=False, cache=False, ckpt=True),
        "no cache, split": dict(dropout=0.05, split=True, cache=False, ckpt=True),
        "no cache, split, dropout 0": dict(dropout=0.0, split=True, cache=False, ckpt=True),
        "no cache, split, no ckpt": dict(dropout=0.05, split=True, cache=False, ckpt=False),
        "no cache, split, dropout 0, no ckpt": dict(dropout=0.0, split=True, cache=False, ckpt=False),
    }
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    wall: dict[str, list[float]] = {n: [] for n in variants}
    step(0.0, True, False, True)  # warm-up
    for r in range(args.repeats):
        for name, kwargs in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step(**kwargs)  # type: ignore[arg-type]
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            print(
                f"repeat {r} {name:38s} cpu {cpu[name][-1]:6.2f} s wall {wall[name][-1]:6.2f} s loss {loss:.5f} "
                f"load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print("median CPU seconds:")
    for name in variants:
        print(f"  {name:38s} {statistics.median(cpu[name]):6.2f} s (wall {statistics.median(wall[name]):6.2f} s)")


if __name__ == "__main__":
    main()
