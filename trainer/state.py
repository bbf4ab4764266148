"""Where does training stand, and how does a resumed run replay the same data and randomness?

`TrainState` is the position (step, examples drawn, latest metrics); the data order depends only on
(seed, epoch), so `draw` replays it from `consumed`; the random generators' states are captured as
tensors and plain containers, so a checkpoint's training state loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class TrainState:
    """Where training stands; saved in training_state/state.json of every intermediate checkpoint."""

    step: int = 0
    consumed: int = 0
    """Training examples drawn so far from the seeded epoch permutations (the data position)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Latest train metrics (and eval/ ones after an evaluation)."""
    best_value: float | None = None
    """Best value of best_metric so far (trainer.evaluation), None before the first evaluation."""
    best_step: int | None = None
    """Step of the evaluation that gave best_value."""
    evals_since_best: int = 0
    """Evaluations since best_value improved (early_stopping_patience counts these)."""

    def epoch(self, n_train: int) -> float:
        return self.consumed / max(n_train, 1)


# --- randomness ----------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python's, numpy's, torch's (and CUDA's) generator states, as tensors, ints, floats and lists only."""
    version, words, gauss_next = random.getstate()
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # key: (624,) uint32
    state: dict[str, Any] = {
        "python": [version, list(words), gauss_next],
        "numpy": [name, np.asarray(key).tolist(), int(pos), int(has_gauss), float(cached_gaussian)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(words), gauss_next))
    name, key, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, np.asarray(key, dtype=np.uint32), pos, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- data order ----------------------------------------------------------------------------------


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
    """Consecutive slices of `items` of at most `size` (lists, so they index tensors along one dimension)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
