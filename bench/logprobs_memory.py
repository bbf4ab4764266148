"""Peak memory of one forward + backward of completion log-probs: full (B, T, V) logits vs chunked from hidden states.

    PYTHONPATH=. .venv/bin/python bench/logprobs_memory.py MODEL [--batch 4] [--length 512] [--lora] [--checkpointing]

Each way runs in its own subprocess (peak RSS is per process on CPU; on a GPU, max_memory_allocated) on
random token ids, the whole sequence a completion (the worst case for logits). Prints, per way, the peak
above the memory held after loading the model, and the time of the forward + backward.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(model_dir: str, way: str, batch: int, length: int, lora: bool, checkpointing: bool) -> dict[str, float]:
    import torch

    from trainer.config import LoraConfig
    from trainer.data import IGNORE
    from trainer.logprobs import batch_sequence_logps, completion_forward, sequence_logps
    from trainer.models import apply_lora, enable_gradient_checkpointing, load_model
    from trainer.packing import collate

    model = load_model(model_dir)
    if lora:
        model = apply_lora(model, LoraConfig(r=16, alpha=32, dropout=0.0))
    if checkpointing:
        enable_gradient_checkpointing(model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).train()
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    seqs = [torch.randint(0, vocab, (length,), generator=generator).tolist() for _ in range(batch)]
    labels = [[IGNORE, *s[1:]] for s in seqs]
    batch_tensors = {k: v.to(device) for k, v in collate(seqs, labels, pad_id=-1, packed=False).items()}

    def before() -> float:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            return torch.cuda.memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    base = before()
    t0 = time.perf_counter()
    if way == "logits":
        sums, _ = sequence_logps(*completion_forward(model, batch_tensors))
    else:
        sums, _ = batch_sequence_logps(model, batch_tensors)
    sums.sum().backward()
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"baseline_mb": base, "peak_mb": peak, "above_baseline_mb": peak - base, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing on")
    parser.add_argument("--way", choices=["logits", "chunked"])
    args = parser.parse_args()
    if args.way:
        print(json.dumps(measure(args.model, args.way, args.batch, args.length, args.lora, args.checkpointing)))
        return
    for way in ("logits", "chunked"):
        cmd = [sys.executable, __file__, args.model, "--batch", str(args.batch), "--length", str(args.length)]
        flags = [f for f, on in (("--lora", args.lora), ("--checkpointing", args.checkpointing)) if on]
        out = subprocess.run([*cmd, *flags, "--way", way], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-2000:])
        print(way, out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
