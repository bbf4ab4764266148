"""How are the parameters updated? AdamW and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from trainer.config import CommonConfig

FUSED_DEVICES = ("cpu", "cuda")
"""Devices whose fused AdamW kernel torch ships (one kernel over all parameters)."""


def build_optimizer(model: torch.nn.Module, config: CommonConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters; no weight decay on biases and norms (1-d tensors).

    Fused (one kernel per parameter, no temporaries) wherever torch has the kernel: on CPU its default,
    a Python loop of ~10 tensor ops per parameter, took 7-9 s of CPU time per step on SmolLM2-135M's
    parameters against ~1 s fused, and its temporaries raised the peak by ~260 MB (bench/README.md,
    "Online steps"). The update is the same AdamW up to float rounding.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(params) and all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        fused=fused or None,
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
    """The schedule of `lr_factor`, stepped once per loop step (for PPO: once per rollout)."""
    warmup = int(config.warmup_ratio * total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, config.lr_scheduler)
    )
