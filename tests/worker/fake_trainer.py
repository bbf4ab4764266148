"""A stand-in for `python -m trainer run` that speaks the event protocol (fast runner tests only).

It trains nothing: it checks that the worker materialised the training file (its sha256 is the
dataset's), counts steps, sleeping `FAKE_STEP_SECONDS` per step, and behaves as the spec's
base_model folder's name asks: "crash" dies with a traceback and no error event, "error" reports an error event.
Checkpoints are folders with a `training_state/step` file, which `--resume` reads back.
SIGUSR1 saves at the next step boundary and stops, as the real trainer does (trainer/signals.py):
a checkpoint of that step (unless saved already), a `stopped` event, exit code 75.

Knobs for the fault tests (environment variables, all optional):
- FAKE_SAMPLES: `sample` events per step (with `step`, like the online trainers' samples);
- FAKE_CHECKPOINT_BYTES: a payload file of this size in every checkpoint (a slower archive/upload);
- FAKE_PID_DIR: the trainer writes its pid there (a test can SIGKILL the trainer alone).
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    output = Path(args.output)
    hyper = spec["hyperparameters"]
    total, save_every = int(hyper.get("max_steps") or 6), int(hyper.get("save_every") or 0)
    delay = float(os.environ.get("FAKE_STEP_SECONDS", "0.05"))
    samples = int(os.environ.get("FAKE_SAMPLES", "0"))
    payload = int(os.environ.get("FAKE_CHECKPOINT_BYTES", "0"))
    if os.environ.get("FAKE_PID_DIR"):
        (Path(os.environ["FAKE_PID_DIR"]) / f"{os.getpid()}.pid").write_text(args.spec)
    start = int((Path(args.resume) / "training_state" / "step").read_text()) if args.resume else 0
    asked: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: asked.append(signum))

    with open(args.events, "a") as events:

        def emit(**event: Any) -> None:
            events.write(json.dumps(event) + "\n")
            events.flush()

        train = Path(spec["train_file"])
        if not train.is_file() or hashlib.sha256(train.read_bytes()).hexdigest() != spec["dataset_sha256"]["train"]:
            emit(type="error", code="invalid_data", message=f"the training file {train} is missing or not the dataset")
            return 1
        model = Path(spec["base_model"]).name
        if model == "crash":
            print("loading model...", flush=True)
            raise RuntimeError("the fake trainer crashed on purpose")
        if model == "error":
            emit(type="error", code="invalid_data", message="dataset row 3: 'chosen' is empty")
            return 1
        emit(type="log", level="info", message=f"starting at step {start}")
        saved = start
        for step in range(start + 1, total + 1):
            if asked:  # at the boundary before `step`
                done = step - 1
                folder = (
                    save(output / "checkpoints" / f"step-{done:08d}", done, payload=payload) if done > saved else None
                )
                if folder is not None:
                    emit(type="checkpoint", step=done, path=str(folder), metrics={"loss": 1.0 / done})
                emit(type="stopped", step=done, checkpoint=str(folder) if folder else None)
                return 75
            time.sleep(delay)
            emit(type="progress", step=step, total_steps=total, epoch=step / total, eta_seconds=(total - step) * delay)
            emit(type="metrics", step=step, values={"loss": 1.0 / step})
            for i in range(samples):
                emit(type="sample", step=step, prompt=f"prompt {i}", completion=f"completion {step}.{i}", reward=0.5)
            if save_every and step % save_every == 0 and step < total:
                folder = save(output / "checkpoints" / f"step-{step:08d}", step, payload=payload)
                emit(type="checkpoint", step=step, path=str(folder), metrics={"loss": 1.0 / step})
                saved = step
        final = save(output / "final", total, state=False, payload=payload)
        emit(type="checkpoint", step=total, kind="final", path=str(final), metrics={"loss": 1.0 / total})
        emit(type="done")
    return 0


def save(folder: Path, step: int, state: bool = True, payload: int = 0) -> Path:
    tmp = folder.with_name(folder.name + ".tmp")
    (tmp / "training_state").mkdir(parents=True, exist_ok=True) if state else tmp.mkdir(parents=True)
    (tmp / "config.json").write_text(json.dumps({"step": step}))
    if payload:
        (tmp / "weights.bin").write_bytes(os.urandom(payload))
    if state:
        (tmp / "training_state" / "step").write_text(str(step))
    tmp.rename(folder)
    return folder


if __name__ == "__main__":
    sys.exit(main())
