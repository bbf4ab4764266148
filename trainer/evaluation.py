"""Which evaluation was the best, and is it time to stop? The best checkpoint and early stopping.

After every evaluation the loop calls `keep_best`. When the config names a `best_metric` (an eval/
metric the algorithm reports), an evaluation that beats the best value so far by more than
`early_stopping_threshold` in the `best_metric_mode` direction writes a checkpoint of kind "best"
(the folder best/, replaced each time; the service keeps each as its own checkpoint and points the job
at the latest). With `early_stopping_patience`, `patience` evaluations in a row without such an
improvement end training: the loop then writes the final checkpoint as usual and the run succeeds.

The best value, its step and the count since it live in `TrainState`, so a resumed run compares with
the best of the run, not of the attempt. This follows transformers' `metric_for_best_model` /
`greater_is_better` and `EarlyStoppingCallback(early_stopping_patience, early_stopping_threshold)`,
except that the best checkpoint is written when it is found rather than picked among saved ones, so
it does not depend on save_every.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from trainer.config import EvalConfig
from trainer.run import Run, TrainError
from trainer.state import TrainState

if TYPE_CHECKING:
    from trainer.checkpoints import Checkpointer


def is_improvement(value: float, best: float | None, mode: str, threshold: float = 0.0) -> bool:
    """Whether `value` beats `best` by more than `threshold` (lower is better for mode "min")."""
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - threshold if mode == "min" else value > best + threshold


def keep_best(run: Run, state: TrainState, values: dict[str, float], checkpointer: Checkpointer) -> bool:
    """Record one evaluation's `values` (eval/... names); save the best checkpoint when it improved.

    Returns True when early stopping says training should end now."""
    config = run.config
    if not isinstance(config, EvalConfig) or config.best_metric is None:
        return False
    name, mode = config.best_metric, config.best_metric_mode or "max"
    if name not in values:
        raise TrainError(
            "invalid_hyperparameters",
            f"best_metric {name!r} is not among this evaluation's metrics ({', '.join(sorted(values))})",
        )
    value = values[name]
    if is_improvement(value, state.best_value, mode, config.early_stopping_threshold):
        state.best_value, state.best_step, state.evals_since_best = value, state.step, 0
        run.events.log(f"step {state.step}: new best {name} = {value:.6g}; saving the best checkpoint")
        checkpointer.save("best", state)
        return False
    state.evals_since_best += 1
    patience = config.early_stopping_patience
    if patience is None or state.evals_since_best < patience:
        return False
    run.events.log(
        f"early stopping at step {state.step}: {name} has not improved on its best {state.best_value:.6g} "
        f"(step {state.best_step}) for {state.evals_since_best} evaluations (early_stopping_patience = {patience}, "
        f"mode {mode}, threshold {config.early_stopping_threshold:g}); saving the final checkpoint"
    )
    return True
