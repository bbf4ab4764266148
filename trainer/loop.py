"""How does training step, and when is it logged, evaluated and saved? The one loop of every algorithm.

An algorithm loads its models and data, calls `start_training` (optimizer, schedule, and the state of
--resume), and hands `train_loop` a step function and a `Checkpointer`:

    step_fn(state, updater) -> StepResult

A step function does one step's work: offline (DPO, reward, SFT: `accumulate`) it accumulates a loss
over micro-batches; online (GRPO, PPO) it rolls out, scores, computes advantages and updates. It calls
`updater.backward(loss)` and `updater.step()` (once, or once per PPO minibatch), which own the NaN
check, gradient clipping and the optimizer step. The loop owns everything around the step: the
schedule, the step counter, progress and metrics events, evaluation, and the periodic and final save.
Between steps it also honours a save-and-stop request (SIGUSR1, trainer/signals.py): it saves the
resumable checkpoint of the step boundary it stands at (unless that one is saved already) and stops.

Multi-process (accelerate, offline algorithms): each step's examples are split across processes
(`indices[rank::world]`), each process accumulates `config.accumulation_steps(world)` micro-batches,
gradients are synchronised on the last one. Only the main process writes events and checkpoints.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.checkpoints import Checkpointer, load_training_state
from trainer.config import EvalConfig
from trainer.evaluation import keep_best
from trainer.optim import build_optimizer, build_scheduler
from trainer.run import Run, TrainError
from trainer.signals import Stopped, save_and_stop_requested
from trainer.state import TrainState, chunks, draw


@dataclass
class Training:
    """What the loop updates: the trained module, its optimizer and schedule, and where training stands."""

    model: Any
    """The trained module (accelerate-prepared): the policy, or for PPO the policy and its value model."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    state: TrainState
    n_train: int
    """Training examples (pairs, rows or prompts) the data order draws from."""
    resumed: dict[str, Any] = field(default_factory=dict)
    """The algorithm's extra state from the --resume checkpoint ({} on a fresh run)."""


def start_training(run: Run, model: Any, n_train: int) -> Training:
    """Optimizer + schedule for `model` (accelerate-prepared), restored from --resume when given."""
    optimizer = build_optimizer(model, run.config)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, run.config, run.config.total_steps(n_train))
    if run.resume is None:
        return Training(model, optimizer, scheduler, TrainState(), n_train)
    state, extra = load_training_state(run.resume, optimizer, scheduler)
    run.events.log(f"resumed from {run.resume} at step {state.step}")
    return Training(model, optimizer, scheduler, state, n_train, extra)


@dataclass
class StepResult:
    """What a step function reports: its metrics, and the samples and tokens it trained on."""

    metrics: dict[str, float]
    samples: int
    tokens: int


class Updater:
    """The optimizer side of a step, handed to the step function: backward, clip, check, step."""

    def __init__(self, run: Run, training: Training) -> None:
        self.run, self.training = run, training
        self.grad_norm = 0.0
        """The gradient norm before clipping of the latest optimizer step."""

    def backward(self, loss: torch.Tensor) -> None:
        """Back-propagate `loss` (already scaled for accumulation); a non-finite loss stops the run."""
        if not torch.isfinite(loss):
            raise TrainError(
                "nan_loss",
                f"the loss became {loss.item()} at step {self.training.state.step + 1}: lower learning_rate "
                f"(now {self.run.config.learning_rate}), keep max_grad_norm > 0, or check the base model's weights",
            )
        self.run.accelerator.backward(loss)

    def step(self) -> float:
        """Clip the gradients to max_grad_norm, step the optimizer, zero the gradients; returns the norm."""
        config, training = self.run.config, self.training
        params = [p for p in training.model.parameters() if p.requires_grad]
        if config.max_grad_norm > 0:
            grad_norm = float(self.run.accelerator.clip_grad_norm_(params, config.max_grad_norm))
        else:
            grad_norm = float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        if not math.isfinite(grad_norm):
            raise TrainError(
                "nan_loss",
                f"the gradient norm became {grad_norm} at step {training.state.step + 1}: lower learning_rate "
                f"(now {config.learning_rate}) or set max_grad_norm",
            )
        training.optimizer.step()
        training.optimizer.zero_grad(set_to_none=True)
        self.grad_norm = grad_norm
        return grad_norm


StepFn = Callable[[TrainState, Updater], StepResult]
LossFn = Callable[[list[int]], tuple[torch.Tensor, dict[str, float], int]]
"""indices of one micro-batch -> (mean loss over it, metrics averaged over it, tokens in it)."""


def train_loop(
    run: Run,
    training: Training,
    step_fn: StepFn,
    checkpointer: Checkpointer,
    *,
    eval_fn: Callable[[], dict[str, float]] | None = None,
    eval_every: int | None = None,
) -> TrainState:
    """Steps from state.step to total_steps (or early stopping), then the final evaluation and checkpoint."""
    config, events, state = run.config, run.events, training.state
    total = config.total_steps(training.n_train)
    updater = Updater(run, training)
    started, first_step = time.perf_counter(), state.step
    saved_at = state.step  # the step whose resumable checkpoint exists (the resume point; 0: none needed)
    stopped_early = False
    if eval_fn is not None and isinstance(config, EvalConfig) and config.eval_on_start and state.step == 0:
        evaluate(run, training, eval_fn, checkpointer)  # the baseline; step 0 is the base model
    training.model.train()
    while state.step < total:
        if _asked_to_stop(run):
            path = checkpointer.save("intermediate", state) if state.step != saved_at else None
            raise Stopped(state.step, str(path.resolve()) if path else None)
        t0 = time.perf_counter()
        result = step_fn(state, updater)
        lr = float(training.scheduler.get_last_lr()[0])
        training.scheduler.step()
        state.step += 1
        step_time = time.perf_counter() - t0
        values = {
            **result.metrics,
            "learning_rate": lr,
            "grad_norm": updater.grad_norm,
            "step_time": step_time,
            "samples_per_second": result.samples / step_time,
            "tokens_per_second": result.tokens / step_time,
            "peak_memory_mb": peak_memory_mb(run.device),
        }
        state.metrics = {**{k: v for k, v in state.metrics.items() if k.startswith("eval/")}, **values}
        eta = (time.perf_counter() - started) / (state.step - first_step) * (total - state.step)
        events.emit(
            "progress",
            step=state.step,
            total_steps=total,
            epoch=round(state.epoch(training.n_train), 4),
            eta_seconds=round(eta, 1),
            samples_per_second=values["samples_per_second"],
            tokens_per_second=values["tokens_per_second"],
            peak_memory_mb=values["peak_memory_mb"],
        )
        if state.step % config.logging_every == 0 or state.step == total:
            events.emit("metrics", step=state.step, values=values)
        if eval_fn is not None and eval_every and state.step % eval_every == 0 and state.step < total:
            stopped_early = evaluate(run, training, eval_fn, checkpointer)
            if stopped_early:
                break  # trainer.evaluation: this step was just evaluated; only the final save is left
        if config.save_every and state.step % config.save_every == 0 and state.step < total:
            checkpointer.save("intermediate", state)
            saved_at = state.step
    if eval_fn is not None and not stopped_early:
        evaluate(run, training, eval_fn, checkpointer)
    checkpointer.save("final", state)
    return state


def _asked_to_stop(run: Run) -> bool:
    """Whether a save-and-stop was asked for, agreed by every process (each gets the signal at its own time)."""
    asked = save_and_stop_requested()
    acc = run.accelerator
    if acc.num_processes == 1:
        return asked
    flag = acc.reduce(torch.tensor([float(asked)], device=acc.device), reduction="sum")
    return bool(flag.item() > 0)


def evaluate(run: Run, training: Training, eval_fn: Callable[[], dict[str, float]], checkpointer: Checkpointer) -> bool:
    """Run `eval_fn` without gradients in eval mode; its metrics become `eval/...` ones. Keeps the best
    checkpoint (trainer.evaluation) and returns True when early stopping says to end training."""
    training.model.eval()
    with torch.no_grad():
        values = {f"eval/{k}": v for k, v in eval_fn().items()}
    training.model.train()
    training.state.metrics.update(values)
    run.events.emit("metrics", step=training.state.step, values=values)
    return keep_best(run, training.state, values, checkpointer)


# --- the offline step: accumulate a loss over micro-batches --------------------------------------


def accumulate(
    run: Run,
    training: Training,
    loss_fn: LossFn,
    *,
    micro_batches: Callable[[list[int]], list[list[int]]] | None = None,
    weight: Callable[[list[int]], float] = len,
    before: Callable[[list[int]], None] | None = None,
) -> StepFn:
    """The step of the offline algorithms: draw batch_size examples, accumulate `loss_fn` over micro-batches.

    `micro_batches` cuts a process's share of the step (default: micro_batch examples at a time);
    `loss_fn` returns the mean over its micro-batch per unit of `weight` (default: per example; SFT: per
    completion token). Each micro-batch's loss and metrics are scaled by its weight over the weight of the
    whole step, times the number of processes (which DDP's gradient average divides out), so the step's
    loss is the mean over all its examples (or tokens) however they are cut into micro-batches and processes.
    `before` runs before each micro-batch's forward (trainer.packing.checkpoint_rule: gradient checkpointing
    "auto" decides per micro-batch).
    """
    config, acc = run.config, run.accelerator

    def step(state: TrainState, updater: Updater) -> StepResult:
        indices = draw(state, training.n_train, config.batch_size, run.spec.seed)
        local = indices[acc.process_index :: acc.num_processes]
        parts = micro_batches(local) if micro_batches else list(chunks(local, config.micro_batch))
        total = weight(indices) / acc.num_processes
        sums: dict[str, float] = {}
        tokens = 0
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            share = weight(part) / total
            if before is not None:
                before(part)
            with acc.no_sync(training.model) if not last and acc.num_processes > 1 else nullcontext():
                loss, metrics, n_tokens = loss_fn(part)
                updater.backward(loss * share)
            tokens += n_tokens
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v * share
        updater.step()
        return StepResult(_mean_over_processes(run, sums), len(indices), tokens * acc.num_processes)

    return step


def average_metrics(parts: list[list[int]], metrics_of: Callable[[list[int]], dict[str, float]]) -> dict[str, float]:
    """Metrics of the examples in `parts` (micro-batches of indices), each part weighted by its size."""
    totals: dict[str, float] = {}
    n = sum(len(part) for part in parts)
    for part in parts:
        for k, v in metrics_of(part).items():
            totals[k] = totals.get(k, 0.0) + v * len(part)
    return {k: v / n for k, v in totals.items()}


def _mean_over_processes(run: Run, values: dict[str, float]) -> dict[str, float]:
    acc = run.accelerator
    if acc.num_processes == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], device=acc.device)
    tensor = acc.reduce(tensor, reduction="mean")
    return dict(zip(keys, tensor.tolist(), strict=True))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
