"""GPU check: every algorithm in bf16 on one CUDA device, and our DPO/GRPO against TRL's on the same card.

    python bench/gpu_check.py --model DIR --out OUT [--steps 20]

Run by bench/gpu_check.sh on a lent GPU machine (no test requires a GPU). The model folder holds a
SmolLM2-135M-shaped model; on a machine without a model hub the script is handed its config and
tokenizer and initialises the weights randomly (said in the report: random weights time the same
as real ones, but losses and rewards mean nothing). Data: the real files in data/ with their real,
unequal lengths (Orca pairs for DPO, HH-RLHF for reward, GSM8K chat for SFT, GSM8K questions for
GRPO/PPO). Each run is a separate process (`python -m trainer run`, TRL in a child interpreter), so
peak GPU memory (torch.cuda.max_memory_allocated) is per run. Results: OUT/gpu_check.json and a
table on stdout.
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"


def model_folder(source: Path, work: Path) -> Path:
    """`source` itself when it has weights; else a random-init model of its config, saved once."""
    if any(source.glob("*.safetensors")):
        return source
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    target = work / "model"
    if not (target / "model.safetensors").is_file():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=torch.float32)
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def gsm8k_prompts(work: Path, n: int) -> Path:
    out = work / "gsm8k-prompts.jsonl"
    with (DATA / "gsm8k-train.jsonl").open() as src, out.open("w") as dst:
        for i, line in enumerate(src):
            if i >= n:
                break
            row = json.loads(line)
            dst.write(json.dumps({"prompt": [{"role": "user", "content": row["question"]}], "answer": row["answer"]}))
            dst.write("\n")
    return out


def parseable_pairs(work: Path) -> Path:
    """HH-RLHF without the few rows our parser refuses (a single-space answer), as the upload would."""
    from trainer.formats import RowError, detect_format, parse_row

    out = work / "hh-rlhf-parseable.jsonl"
    with (DATA / "hh-rlhf-harmless-base.jsonl").open() as src, out.open("w") as dst:
        for line in src:
            row = json.loads(line)
            try:
                parse_row(row, detect_format(row))
            except RowError:
                continue
            dst.write(line)
    return out


ONLINE = {"max_new_tokens": 128, "temperature": 1.0, "top_p": 1.0}
LENGTH_RULE = [{"type": "rule", "rule": "length", "weight": 1.0, "target_length": 200}]


def specs(model: Path, work: Path, steps: int, online_steps: int) -> dict[str, dict[str, Any]]:
    common = {"max_steps": steps, "precision": "bf16", "lr_scheduler": "constant"}
    online = {**common, "max_steps": online_steps}
    prompts = str(gsm8k_prompts(work, 400))
    return {
        "dpo": {
            "algorithm": "dpo",
            "train_file": str(DATA / "orca-dpo-pairs.openai-dpo.jsonl"),
            "hyperparameters": {**common, "learning_rate": 5e-6, "batch_size": 8, "max_length": 1024},
        },
        "reward": {
            "algorithm": "reward",
            "train_file": str(parseable_pairs(work)),
            "hyperparameters": {**common, "learning_rate": 1e-5, "batch_size": 16, "max_length": 1024},
        },
        "sft": {
            "algorithm": "sft",
            "train_file": str(DATA / "gsm8k-openai-chat-sft.jsonl"),
            "hyperparameters": {**common, "learning_rate": 1e-5, "batch_size": 16, "max_length": 1024},
        },
        "grpo": {
            "algorithm": "grpo",
            "train_file": prompts,
            "reward": LENGTH_RULE,
            "hyperparameters": {**online, **ONLINE, "learning_rate": 1e-6, "batch_size": 8, "num_generations": 8},
        },
        "ppo": {
            "algorithm": "ppo",
            "train_file": prompts,
            "reward": LENGTH_RULE,
            "hyperparameters": {**online, **ONLINE, "learning_rate": 1e-6, "batch_size": 16},
        },
    }


def run_ours(name: str, spec: dict[str, Any], model: Path, work: Path, timeout: float) -> dict[str, Any]:
    spec = {**spec, "base_model": str(model), "seed": 0}
    folder = work / f"ours-{name}-{model.parent.name}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    events = folder / "events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer", "run", str(folder / "spec.json"), "--output", str(folder / "out")]
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [*cmd, "--events", str(events)], cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    metrics = [e["values"] for e in lines if e["type"] == "metrics"]
    errors = [e for e in lines if e["type"] == "error"]
    if proc.returncode or not metrics:
        return {"ok": False, "rc": proc.returncode, "error": errors[-1:] or proc.stderr[-2000:]}
    # the trainer's first log line names where it ran ("... 1 process(es) on cuda"); "device" never matched it
    devices = [m for e in lines if e["type"] == "log" and "process(es) on" in (m := str(e.get("message", "")))]
    later = metrics[1:] or metrics
    return {
        "ok": True,
        "wall_s": wall,
        "steps": len(metrics),
        "s_per_step": sum(m["step_time"] for m in later) / len(later),
        "samples_per_s": sum(m["samples_per_second"] for m in later) / len(later),
        "tokens_per_s": sum(m.get("tokens_per_second", 0.0) for m in later) / len(later),
        "peak_gpu_mb": max(m["peak_memory_mb"] for m in metrics),
        "first_loss": next((m[k] for m in metrics[:1] for k in ("loss", "loss/policy") if k in m), None),
        "time_split": {k: v for k, v in later[-1].items() if k.startswith("time/")},
        "device_logs": devices[:2],
        "spec": spec,
    }


TRL_SIDE = r"""
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

a = json.loads(sys.argv[1])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(a["model"])
model = AutoModelForCausalLM.from_pretrained(a["model"], dtype=torch.float32)
rows = [json.loads(l) for l in open(a["data"])]
times = []
class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw): self.t0 = time.perf_counter()
    def on_step_end(self, args, state, control, **kw): times.append(time.perf_counter() - self.t0)
common = dict(output_dir=a["out"], max_steps=a["steps"], learning_rate=a["lr"], lr_scheduler_type="constant",
              logging_steps=1, save_strategy="no", report_to="none", bf16=True, seed=0, disable_tqdm=True)
if a["kind"] == "dpo":
    from trl import DPOConfig, DPOTrainer
    data = [{"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
             "rejected": r["non_preferred_output"]} for r in rows]
    extra = {} if a["defaults"] else dict(gradient_checkpointing=False, max_length=1024)
    cfg = DPOConfig(per_device_train_batch_size=a["batch"], **common, **extra)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(data), processing_class=tok)
else:
    from trl import GRPOConfig, GRPOTrainer
    def reward(completions, **kw):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [-abs(len(t) - 200) / 200 for t in texts]
    extra = {} if a["defaults"] else dict(gradient_checkpointing=False, beta=0.04, loss_type="dapo")
    cfg = GRPOConfig(per_device_train_batch_size=a["batch"] * a["G"], num_generations=a["G"],
                     max_completion_length=a["new"], temperature=1.0, top_p=1.0, **common, **extra)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=Dataset.from_list(rows),
                          processing_class=tok)
trainer.add_callback(Clock())
trainer.train()
later = times[1:] or times
print(json.dumps({"s_per_step": sum(later) / len(later), "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20}))
"""


def run_trl(
    kind: str, model: Path, data: Path, work: Path, steps: int, defaults: bool, timeout: float
) -> dict[str, Any]:
    payload = {
        "kind": kind,
        "model": str(model),
        "data": str(data),
        "out": str(work / f"trl-{kind}"),
        "steps": steps,
        "lr": 5e-6 if kind == "dpo" else 1e-6,
        "batch": 8,
        "G": 8,
        "new": ONLINE["max_new_tokens"],
        "defaults": defaults,
    }
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", TRL_SIDE, json.dumps(payload)],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - started
    if proc.returncode:
        return {"ok": False, "rc": proc.returncode, "error": proc.stderr[-2000:]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"ok": True, "wall_s": wall, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder (weights, or config + tokenizer)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps of DPO, reward and SFT")
    parser.add_argument("--online-steps", type=int, default=6, help="optimizer steps of GRPO and PPO")
    parser.add_argument("--only", default="dpo,reward,sft,grpo,ppo,trl-dpo,trl-grpo")
    parser.add_argument("--tag", default="", help="suffix of the result files (one per model size)")
    parser.add_argument("--timeout", type=float, default=150, help="seconds per run")
    args = parser.parse_args()
    import torch

    work = Path("/tmp/alignd-gpu-check") / (args.tag or "default")
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "torch": torch.__version__,
        "random_weights": not any(args.model.glob("*.safetensors")),
    }
    model = model_folder(args.model, work)
    suffix = f"-{args.tag}" if args.tag else ""
    plan_runs: list[dict[str, Any]] = []

    def save() -> None:  # after every run, so a run cut off at the machine's limit still reports the rest
        (args.out / f"gpu_check{suffix}.json").write_text(json.dumps(report, indent=1))
        (args.out / f"plan_runs{suffix}.json").write_text(json.dumps({"runs": plan_runs}, indent=1))

    wanted = args.only.split(",")
    for name, spec in specs(model, work, args.steps, args.online_steps).items():
        if name in wanted:
            report[name] = result = run_ours(name, spec, model, work, args.timeout)
            print(name, json.dumps({k: v for k, v in result.items() if k != "spec"}), flush=True)
            if result["ok"]:
                plan_runs.append(
                    {
                        "algorithm": name,
                        "spec": result["spec"],
                        "model_config": str(model / "config.json"),
                        "peak_gpu_mb": result["peak_gpu_mb"],
                    }
                )
            save()
    prompts = work / "gsm8k-prompts.jsonl"
    for kind, data in (("dpo", DATA / "orca-dpo-pairs.openai-dpo.jsonl"), ("grpo", prompts)):
        if f"trl-{kind}" in wanted:
            steps = args.steps if kind == "dpo" else args.online_steps
            for defaults in (False, True):
                key = f"trl-{kind}-{'defaults' if defaults else 'matched'}"
                report[key] = run_trl(kind, model, data, work, steps, defaults, args.timeout)
                print(key, json.dumps(report[key]), flush=True)
                save()
    save()


if __name__ == "__main__":
    main()
