"""Where does one DPO step's time go? Variants of OUR step on the same pairs, in one process, interleaved.

    PYTHONPATH=. python bench/dpo_step_parts.py [--pairs 2] [--skip 0] [--repeats 2] [--threads 1]
        [--variants padded,split,padded-nockpt,split-nockpt,split-bf16,ref-padded,ref-split]

SmolLM2-135M-Instruct (bench/out/), LoRA r16 all-linear (dropout 0, so variants compute the same
numbers), the Orca pairs from data/ at max_length 1024 / max_prompt_length 512 (our defaults). One
"step" = forward of the pairs' chosen + rejected sequences, DPO loss against a fixed reference, backward.
Variants: padded (one forward of all sequences padded to the longest, as trainer.dpo did), split
(sequences grouped by length, trainer.logprobs' default now), with/without gradient checkpointing,
bf16 autocast; ref-*: the no-grad reference forward alone. Each repeat runs every variant once, in order,
so a load change hits them all. Reports wall and process CPU seconds and peak RSS growth (VmHWM reset
through /proc/self/clear_refs before each variant).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "bench" / "out" / "smollm2-135m-instruct"
if not MODEL.is_dir():
    MODEL = Path("/work/main/bench/out/smollm2-135m-instruct")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--skip", type=int, default=0, help="first pair of the file to use")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights (our precision option)")
    parser.add_argument("--lora-dropout", type=float, default=0.0)
    parser.add_argument("--variants", default="padded,split,padded-nockpt,split-nockpt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from trainer import logprobs, packing
    from trainer.config import DPOConfig, LoraConfig
    from trainer.data import encode_preferences, read_dataset
    from trainer.dpo import pair_metrics
    from trainer.models import apply_lora, load_model, load_tokenizer
    from trainer.packing import pair_batch

    tokenizer = load_tokenizer(str(MODEL))
    examples = read_dataset(str(ROOT / "data" / "orca-dpo-pairs.openai-dpo.jsonl"), "preference")
    examples = examples[args.skip : args.skip + args.pairs]
    features = encode_preferences(examples, tokenizer, args.max_length, min(512, args.max_length // 2)).features
    lengths = [len(f.prompt_ids) + len(getattr(f, k)) for k in ("chosen_ids", "rejected_ids") for f in features]
    print(f"sequence lengths {lengths}: real {sum(lengths)}, padded {len(lengths) * max(lengths)}")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = apply_lora(load_model(str(MODEL), "causal", dtype=dtype), LoraConfig(dropout=args.lora_dropout))
    model.train()
    config = DPOConfig(max_length=args.max_length, max_prompt_length=min(512, args.max_length // 2))
    batch = pair_batch(features, tokenizer.pad_token_id, False)
    ref = torch.zeros(len(features), 2) - 300.0

    def set_ckpt(on: bool) -> None:
        if on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        else:
            model.gradient_checkpointing_disable()
            model.disable_input_require_grads()

    def step(split: bool, ckpt: bool, bf16: bool, grad: bool = True) -> float:
        set_ckpt(ckpt)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        old = packing.SPLIT_BY_LENGTH
        packing.SPLIT_BY_LENGTH = split
        try:
            if not grad:
                was = model.training
                model.eval()
                with torch.no_grad(), ctx, model.disable_adapter():
                    logps, _ = logprobs.batch_sequence_logps(model, batch)
                model.train(was)
                return float(logps.sum())
            with ctx:
                logps, lengths_ = logprobs.batch_sequence_logps(model, batch)
            loss, _ = pair_metrics(config, logps, lengths_, ref)
            loss.backward()
            model.zero_grad(set_to_none=True)
            return float(logps.sum())
        finally:
            packing.SPLIT_BY_LENGTH = old

    variants = {
        "padded": dict(split=False, ckpt=True, bf16=False),
        "split": dict(split=True, ckpt=True, bf16=False),
        "padded-nockpt": dict(split=False, ckpt=False, bf16=False),
        "split-nockpt": dict(split=True, ckpt=False, bf16=False),
        "split-bf16": dict(split=True, ckpt=True, bf16=True),
        "split-nockpt-bf16": dict(split=True, ckpt=False, bf16=True),
        "ref-padded": dict(split=False, ckpt=False, bf16=False, grad=False),
        "ref-split": dict(split=True, ckpt=False, bf16=False, grad=False),
        "ref-split-bf16": dict(split=True, ckpt=False, bf16=True, grad=False),
    }
    names = args.variants.split(",")
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    peak: dict[str, list[float]] = {n: [] for n in names}
    value: dict[str, float] = {}
    step(True, True, False)  # warm-up
    for r in range(args.repeats):
        for name in names:
            base = current_mb()
            reset_peak()
            t0, c0 = time.perf_counter(), time.process_time()
            value[name] = step(**variants[name])
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
            peak[name].append(rss_mb() - base)
            print(
                f"repeat {r} {name:18s} wall {wall[name][-1]:7.2f} s cpu {cpu[name][-1]:7.2f} s "
                f"peak +{peak[name][-1]:6.0f} MB sum logps {value[name]:.3f} load {os.getloadavg()[0]:.1f}",
                flush=True,
            )
    print("median over repeats:")
    for name in names:
        print(
            f"  {name:18s} wall {statistics.median(wall[name]):7.2f} s  cpu {statistics.median(cpu[name]):7.2f} s  "
            f"peak +{max(peak[name]):6.0f} MB"
        )


if __name__ == "__main__":
    main()
