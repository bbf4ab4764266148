"""The plumbing every algorithm shares: events, seeding, data order, optimizer and schedule, the step
loop with gradient accumulation, log-probs, checkpoints and resume.

Plain functions plus two small objects: `Run` (what one invocation of the CLI works with) and
`TrainState` (what a resumed run needs to continue exactly where it stopped). An algorithm module
(dpo.py, reward.py, sft.py, grpo.py, ppo.py) loads its models and data, then hands a `loss_fn` to
`run_loop`, which owns the optimizer steps, logging, evaluation and saving.

Multi-process (accelerate): each optimizer step's examples are split across processes
(`indices[rank::world]`), each process accumulates `config.accumulation_steps(world)` micro-batches,
gradients are synchronised on the last one. Only the main process writes events and checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import resource
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from accelerate import Accelerator

from trainer.config import CommonConfig, TrainSpec
from trainer.data import IGNORE
from trainer.models import ModelKind

PACKAGE_VERSION = "0.1.0"


class TrainError(Exception):
    """A failure the user can act on; `code` goes into the error event."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Terminated(BaseException):
    """Raised by the SIGTERM handler: stop now, save nothing more (exit code 143)."""


# --- events --------------------------------------------------------------------------------------


class Events:
    """JSON-lines event writer (DESIGN §7): one object per line, flushed per line."""

    def __init__(self, path: str | None = None, enabled: bool = True) -> None:
        self.enabled = enabled
        self._fh: IO[str] = open(path, "a", encoding="utf-8") if path and enabled else sys.stdout  # noqa: SIM115

    def emit(self, type_: str, **fields: Any) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps({"type": type_, **fields}, default=_jsonable) + "\n")
        self._fh.flush()

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)

    def close(self) -> None:
        if self._fh is not sys.stdout:
            self._fh.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --- the run and its state -----------------------------------------------------------------------


@dataclass
class TrainState:
    """Where training stands; saved in training_state/state.json of every intermediate checkpoint."""

    step: int = 0
    consumed: int = 0
    """Training examples drawn so far from the seeded epoch permutations (the data position)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest train metrics (and eval/ ones after an evaluation)."""

    def epoch(self, n_train: int) -> float:
        return self.consumed / max(n_train, 1)


@dataclass
class Run:
    """One invocation of `python -m trainer run`: the spec, its config and where things go."""

    spec: TrainSpec
    config: CommonConfig
    output: Path
    events: Events
    accelerator: Accelerator
    resume: Path | None = None
    data_report: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def make_accelerator() -> Accelerator:
    """CPU when no GPU is visible; under `accelerate launch` one process per GPU."""
    return Accelerator(cpu=not torch.cuda.is_available())


# --- seeding and data order ----------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch; depends only on (seed, epoch) so resume can replay it."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def draw(state: TrainState, n: int, count: int, seed: int) -> list[int]:
    """The next `count` example indices from the epoch permutations; advances state.consumed."""
    out: list[int] = []
    while len(out) < count:
        epoch, offset = divmod(state.consumed, n)
        take = min(count - len(out), n - offset)
        out.extend(epoch_order(n, seed, epoch)[offset : offset + take])
        state.consumed += take
    return out


def chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- optimizer and schedule ----------------------------------------------------------------------


def build_optimizer(model: torch.nn.Module, config: CommonConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norms (1-d tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
    )


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step`: linear warmup, then constant/linear/cosine decay to 0."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: CommonConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = int(config.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, config.lr_scheduler)
    )


# --- log-probs -----------------------------------------------------------------------------------


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each label token under `logits` (B, T, V) -> (B, T-1); 0 where the label is IGNORE.

    Position t predicts label t+1 (the usual causal shift).
    """
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != IGNORE
    safe = targets.masked_fill(~mask, 0)
    logps = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    return logps * mask


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probs (B,), completion token counts (B,)) for logits (B, T, V), labels (B, T).

    log p = logit[label] - logsumexp(logits), one row at a time: no (B, T, V) log-softmax is ever
    materialised, which keeps the peak memory of the loss low for large vocabularies.
    """
    logits = logits[:, :-1, :]
    targets = labels[:, 1:]
    mask = targets != IGNORE  # (B, T-1)
    picked = logits.gather(-1, targets.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1).float()  # (B, T-1)
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (B, T-1)
    logps = (picked - lse) * mask
    return logps.sum(-1), mask.sum(-1)


def completion_forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a causal LM and return (logits, labels) cut to the span that holds completion tokens.

    The LM head (a vocab-sized matmul) only runs from the position before the earliest completion
    token (`logits_to_keep`), so prompt positions cost no logits. Returns logits (B, K, V) and the
    matching labels (B, K), ready for `sequence_logps` / `token_logps`.
    """
    labels = batch["labels"]
    width = labels.shape[1]
    has_label = (labels != IGNORE).any(0)
    first = int(has_label.float().argmax()) if bool(has_label.any()) else width - 1
    keep = width - max(first - 1, 0)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    return out.logits, labels[:, width - keep :]


# --- models --------------------------------------------------------------------------------------


def load_policy(run: Run, tokenizer: Any, kind: ModelKind = "causal") -> Any:
    """The model to train: base (or the --resume checkpoint), LoRA when asked, checkpointing when asked."""
    from trainer.models import apply_lora, enable_gradient_checkpointing, load_model, resolve_dtype

    dtype = resolve_dtype(run.config.precision)
    lora = run.spec.lora
    source = str(run.resume) if run.resume is not None and lora is None else run.spec.base_model
    model: Any = load_model(source, kind, dtype=dtype, pad_token_id=tokenizer.pad_token_id)
    if lora is not None:
        if run.resume is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(run.resume), is_trainable=True)
        else:
            model = apply_lora(model, lora, kind)
    if run.config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model.to(run.device)


def setup_training(
    run: Run, model: Any, n_train: int
) -> tuple[Any, torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, TrainState, dict[str, Any]]:
    """Optimizer + schedule for `model` (accelerate-prepared); restored from --resume when given.

    Returns (model, optimizer, scheduler, state, extra_state saved by the algorithm).
    """
    optimizer = build_optimizer(model, run.config)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, run.config, run.config.total_steps(n_train))
    if run.resume is None:
        return model, optimizer, scheduler, TrainState(), {}
    state, extra = load_training_state(run.resume, optimizer, scheduler)
    run.events.log(f"resumed from {run.resume} at step {state.step}")
    return model, optimizer, scheduler, state, extra


# --- the step loop -------------------------------------------------------------------------------

LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float], int]]
"""indices of one micro-batch -> (mean loss over it, metrics averaged over it, tokens in it)."""


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_loop(
    run: Run,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    state: TrainState,
    *,
    n_train: int,
    loss_fn: LossFn,
    save_fn: Callable[[str, TrainState], Path],
    eval_fn: Callable[[], dict[str, float]] | None = None,
) -> TrainState:
    """Optimizer steps from state.step to total_steps: accumulate, clip, step, log, evaluate, save."""
    config, acc, events = run.config, run.accelerator, run.events
    total = config.total_steps(n_train)
    accumulation = config.accumulation_steps(acc.num_processes)
    micro = config.micro_batch_size or config.batch_size
    started = time.perf_counter()
    first_step = state.step
    model.train()
    while state.step < total:
        t0 = time.perf_counter()
        indices = draw(state, n_train, config.batch_size, run.spec.seed)
        local = indices[acc.process_index :: acc.num_processes]
        parts = list(chunks(local, micro))
        sums: dict[str, float] = {}
        tokens = 0
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            ctx = acc.no_sync(model) if not last and acc.num_processes > 1 else _nullcontext()
            with ctx:
                loss, metrics, n_tokens = loss_fn(part)
                if not torch.isfinite(loss):
                    raise TrainError(
                        "nan_loss",
                        f"the loss became {loss.item()} at step {state.step + 1}: lower learning_rate "
                        f"(now {config.learning_rate}), keep max_grad_norm > 0, or check the base model's weights",
                    )
                acc.backward(loss * len(part) / len(local))
            tokens += n_tokens
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * len(part) / len(local)
        assert accumulation == len(parts) or len(local) < micro * accumulation
        params = [p for p in model.parameters() if p.requires_grad]
        if config.max_grad_norm > 0:
            grad_norm = float(acc.clip_grad_norm_(params, config.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        if not math.isfinite(grad_norm):
            raise TrainError(
                "nan_loss",
                f"the gradient norm became {grad_norm} at step {state.step + 1}: lower learning_rate "
                f"(now {config.learning_rate}) or set max_grad_norm",
            )
        lr = float(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        step_time = time.perf_counter() - t0
        values = _reduce(acc, sums)
        values.update(
            learning_rate=lr,
            grad_norm=grad_norm,
            step_time=step_time,
            samples_per_second=len(indices) / step_time,
            tokens_per_second=tokens * acc.num_processes / step_time,
            peak_memory_mb=peak_memory_mb(run.device),
        )
        state.metrics = {**{k: v for k, v in state.metrics.items() if k.startswith("eval/")}, **values}
        elapsed = time.perf_counter() - started
        eta = elapsed / (state.step - first_step) * (total - state.step)
        events.emit(
            "progress",
            step=state.step,
            total_steps=total,
            epoch=round(state.epoch(n_train), 4),
            eta_seconds=round(eta, 1),
            samples_per_second=values["samples_per_second"],
            tokens_per_second=values["tokens_per_second"],
            peak_memory_mb=values["peak_memory_mb"],
        )
        if state.step % config.logging_every == 0 or state.step == total:
            events.emit("metrics", step=state.step, values=values)
        if eval_fn is not None and config.eval_every and state.step % config.eval_every == 0 and state.step < total:
            _evaluate(run, model, state, eval_fn)
        if config.save_every and state.step % config.save_every == 0 and state.step < total:
            save_fn("intermediate", state)
    if eval_fn is not None:
        _evaluate(run, model, state, eval_fn)
    return state


def _evaluate(run: Run, model: torch.nn.Module, state: TrainState, eval_fn: Callable[[], dict[str, float]]) -> None:
    model.eval()
    with torch.no_grad():
        values = {f"eval/{k}": v for k, v in eval_fn().items()}
    model.train()
    state.metrics.update(values)
    run.events.emit("metrics", step=state.step, values=values)


def _reduce(acc: Accelerator, values: dict[str, float]) -> dict[str, float]:
    if acc.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], device=acc.device)
    tensor = acc.reduce(tensor, reduction="mean")
    return dict(zip(keys, tensor.tolist(), strict=True))


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# --- checkpoints ---------------------------------------------------------------------------------


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_hashes(spec: TrainSpec) -> dict[str, str]:
    """sha256 of the train/eval files: the spec's when the worker filled them in, else computed."""
    if spec.dataset_sha256:
        return dict(spec.dataset_sha256)
    out = {"train": file_sha256(spec.train_file)}
    if spec.eval_file:
        out["eval"] = file_sha256(spec.eval_file)
    return out


def checkpoint_dir(run: Run, kind: str, step: int) -> Path:
    return run.output / "final" if kind == "final" else run.output / "checkpoints" / f"step-{step:08d}"


def encode_preference_file(run: Run, tokenizer: Any, path: str, name: str) -> list[Any]:
    """Read and tokenise one preference file (dpo, reward), logging and recording its truncation report."""
    from trainer.data import encode_preferences, read_dataset

    config = run.config
    encoded = encode_preferences(
        read_dataset(path, "preference", name), tokenizer, config.max_length, config.max_prompt_length, name
    )
    run.events.log(encoded.report.message(name))
    run.data_report[name] = vars(encoded.report)
    return encoded.features


def save_checkpoint(
    run: Run,
    kind: str,
    state: TrainState,
    *,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint under a temporary name, rename it into place, then emit its event.

    The folder is a Hugging Face model folder (weights or LoRA adapter, tokenizer, generation config,
    README.md, alignd.json); intermediate ones add training_state/ for --resume. When the spec asks for
    `lora.merge`, the final one also holds the merged model in merged/ (alignd.json "merged_model").
    """
    from trainer.models import is_peft

    merge_lora = kind == "final" and run.spec.lora is not None and run.spec.lora.merge
    acc = run.accelerator
    final = checkpoint_dir(run, kind, state.step)
    acc.wait_for_everyone()
    if run.is_main:
        tmp = final.parent / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            unwrapped = acc.unwrap_model(model)
            unwrapped.save_pretrained(str(tmp), safe_serialization=True)
            tokenizer.save_pretrained(str(tmp))
            info = _alignd_json(run, kind, state, adapter=is_peft(unwrapped))
            if merge_lora and is_peft(unwrapped):
                merged = unwrapped.merge_and_unload()
                merged.save_pretrained(str(tmp / "merged"), safe_serialization=True)
                tokenizer.save_pretrained(str(tmp / "merged"))
                info["merged_model"] = "merged"
            if kind == "intermediate":
                ts = tmp / "training_state"
                ts.mkdir()
                (ts / "state.json").write_text(json.dumps(asdict(state)))
                torch.save(
                    {
                        "optimizer": optimizer.state_dict() if optimizer is not None else None,
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "rng": rng_state(),
                        "extra": extra_state or {},
                    },
                    ts / "state.pt",
                )
            (tmp / "alignd.json").write_text(json.dumps(info, indent=2, default=_jsonable))
            (tmp / "README.md").write_text(model_card(info))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        run.events.emit("checkpoint", step=state.step, path=str(final.resolve()), kind=kind, metrics=state.metrics)
    acc.wait_for_everyone()
    return final


def load_training_state(
    folder: Path, optimizer: torch.optim.Optimizer, scheduler: Any
) -> tuple[TrainState, dict[str, Any]]:
    """Restore optimizer, scheduler and RNG from a checkpoint; return its TrainState and extra state."""
    ts = folder / "training_state"
    if not (ts / "state.json").is_file():
        raise TrainError(
            "invalid_resume", f"{folder} has no training_state/: resume from an intermediate checkpoint folder"
        )
    state = TrainState(**json.loads((ts / "state.json").read_text()))
    blob = torch.load(ts / "state.pt", weights_only=False)
    if blob["optimizer"] is not None:
        optimizer.load_state_dict(blob["optimizer"])
    if blob["scheduler"] is not None:
        scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return state, blob["extra"]


def _alignd_json(run: Run, kind: str, state: TrainState, *, adapter: bool) -> dict[str, Any]:
    spec = run.spec
    return {
        "job_id": spec.job_id,
        "algorithm": spec.algorithm,
        "base_model": spec.base_model,
        "kind": kind,
        "step": state.step,
        "seed": spec.seed,
        "hyperparameters": run.config.model_dump(),
        "lora": spec.lora.model_dump() if spec.lora else None,
        "adapter": adapter,
        "merged_model": None,
        "dataset_sha256": dataset_hashes(spec),
        "data": run.data_report,
        "metrics": state.metrics,
        "package": "alignd",
        "package_version": PACKAGE_VERSION,
    }


def model_card(info: dict[str, Any]) -> str:
    """A short Hugging Face model card for a checkpoint."""
    metrics = "\n".join(f"| {k} | {v:.4g} |" for k, v in sorted(info["metrics"].items()) if isinstance(v, float))
    hyper = json.dumps(info["hyperparameters"], indent=2)
    how = (
        "This folder holds a LoRA adapter; load it with `peft.AutoPeftModelForCausalLM.from_pretrained(dir)`"
        + (" or use the merged model in `merged/`." if info.get("merged_model") else ".")
        if info["adapter"]
        else "Load it with `transformers` `from_pretrained(dir)`."
    )
    return f"""---
library_name: {"peft" if info["adapter"] else "transformers"}
base_model: {info["base_model"]}
tags: [alignd, {info["algorithm"]}]
---

# {info["algorithm"].upper()} checkpoint (step {info["step"]}, {info["kind"]})

Trained by alignd {info["package_version"]} from `{info["base_model"]}` with seed {info["seed"]}.
{how}

## Metrics at this step

| metric | value |
|---|---|
{metrics}

## Hyperparameters

```json
{hyper}
```

Dataset sha256: {json.dumps(info["dataset_sha256"])}. Full details in `alignd.json`.
"""


# --- signals -------------------------------------------------------------------------------------


def install_sigterm_handler() -> None:
    """SIGTERM raises Terminated in the main thread, so the run stops at once and saves nothing more."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, handler)
