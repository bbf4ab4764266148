"""A stand-in trainer for the dashboard tests: the event protocol with the metrics each algorithm reports.

It trains nothing. Per step (sleeping `FAKE_STEP_SECONDS`) it emits progress and metrics named as the
real trainer names them (loss, learning_rate, grad_norm, tokens_per_second; DPO rewards/margins and
rewards/accuracies with eval/ twins; GRPO reward, rewards/<component>, kl, clip_ratio,
completions/mean_length) and, for grpo/ppo, `sample` events with prompts from the training file. The
final checkpoint is a folder with a config.json. SIGUSR1 (pause) stops it at the next step boundary
with a `stopped` event, as the real trainer does (trainer/signals.py); a resumed run starts over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("spec")
    parser.add_argument("--output", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--resume")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    algorithm = spec["algorithm"]
    total = int(spec["hyperparameters"].get("max_steps") or 10)
    delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.3"))
    prompts = [json.loads(line) for line in Path(spec["train_file"]).read_text().splitlines() if line.strip()]
    components = [c.get("name") or c.get("rule") or "model" for c in spec.get("reward") or []]
    asked: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))

    with open(args.events, "a") as events:

        def emit(**event: Any) -> None:
            events.write(json.dumps(event) + "\n")
            events.flush()

        emit(type="log", level="info", message=f"fake {algorithm} trainer: {total} steps")
        for step in range(1, total + 1):
            if asked:
                emit(type="stopped", step=step - 1, checkpoint=None)
                return 75
            # A long run (>= 100 steps) idles after step 10, so cancelling it does not coincide with a
            # relayed event: on SQLite two processes appending events to one job at once can collide
            # on the event seq (the row lock is a no-op there), which would make the cancel test flaky.
            time.sleep(delay if total < 100 or step <= 10 else 5.0)
            values: dict[str, float] = {
                "loss": 1.0 / step + 0.05 * math.sin(step),
                "learning_rate": 1e-5 * (1 - step / total),
                "grad_norm": 2.0 / math.sqrt(step),
                "tokens_per_second": 900.0 + 10 * step,
            }
            if algorithm == "dpo":
                values.update({"rewards/margins": 0.1 * step, "rewards/accuracies": min(1.0, 0.5 + 0.05 * step)})
            if algorithm in ("grpo", "ppo"):
                parts = {name: 0.1 * step / (i + 1) for i, name in enumerate(components)}
                values.update({"reward": sum(parts.values()), **{f"rewards/{k}": v for k, v in parts.items()}})
                values.update({"kl": 0.01 * step, "clip_ratio": 0.02, "completions/mean_length": 20.0 + step})
                row = prompts[step % len(prompts)]
                emit(
                    type="sample",
                    step=step,
                    prompt=row.get("prompt"),
                    completion=f"fake completion at step {step}",
                    reward=values["reward"],
                    rewards=parts,
                )
            emit(type="progress", step=step, total_steps=total, epoch=step / total, eta_seconds=(total - step) * delay)
            emit(type="metrics", step=step, values=values)
            if algorithm == "dpo" and step % 5 == 0:
                emit(type="metrics", step=step, values={"eval/loss": 1.2 / step, "eval/rewards/margins": 0.08 * step})
        final = Path(args.output) / "final"
        final.mkdir(parents=True)
        (final / "config.json").write_text(json.dumps({"model_type": "fake", "steps": total}))
        emit(type="checkpoint", step=total, kind="final", path=str(final))
        emit(type="done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
