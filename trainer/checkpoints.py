"""What does a checkpoint hold, and how does a run resume from one?

A checkpoint is a Hugging Face model folder (weights or LoRA adapter, tokenizer, generation config,
README.md model card, alignd.json), written under a temporary name and renamed into place, then
announced with a `checkpoint` event. Intermediate ones add training_state/ for --resume:

- state.json: the `TrainState` (step, data position, latest metrics);
- state.pt: optimizer, scheduler, random generators and the algorithm's extra state (e.g. DPO's
  reference log-probs, PPO's value model and KL coefficient), as tensors and plain containers only.
  It is read with `torch.load(weights_only=True)`: whoever can write the artifact store must not be
  able to run code in the worker, so a state file that holds any other pickled object is refused.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from trainer.config import TrainSpec
from trainer.events import jsonable
from trainer.run import Run, TrainError
from trainer.state import TrainState, rng_state, set_rng_state

if TYPE_CHECKING:
    from trainer.loop import Training


def _package_version() -> str:
    try:
        return importlib.metadata.version("alignd")
    except importlib.metadata.PackageNotFoundError:  # a bare checkout that was never installed
        return "0+unknown"


PACKAGE_VERSION = _package_version()
"""The installed alignd's version, recorded in alignd.json and the model card."""


class Checkpointer:
    """Writes the checkpoints of one run; the loop calls `save` for the periodic and the final ones.

    `model` is what is saved as the model folder (default: the trained module); `extra_state` returns
    the algorithm's own resumable state (tensors and plain values) when an intermediate one is written.
    """

    def __init__(
        self,
        run: Run,
        training: Training,
        tokenizer: Any,
        *,
        model: Any = None,
        extra_state: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.run, self.training, self.tokenizer = run, training, tokenizer
        self.model = training.model if model is None else model
        self.extra_state = extra_state

    def save(self, kind: str, state: TrainState) -> Path:
        """Write the `kind` ("intermediate", "final" or "best") checkpoint of `state`; returns its folder."""
        run, acc = self.run, self.run.accelerator
        final = checkpoint_dir(run, kind, state.step)
        acc.wait_for_everyone()
        if run.is_main:
            tmp = final.parent / f".tmp-{final.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                self._write_model_folder(tmp, kind, state)
                if kind == "intermediate":
                    self._write_training_state(tmp / "training_state", state)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            run.events.emit("checkpoint", step=state.step, path=str(final.resolve()), kind=kind, metrics=state.metrics)
        acc.wait_for_everyone()
        return final

    def _write_model_folder(self, folder: Path, kind: str, state: TrainState) -> None:
        """Weights (or adapter), tokenizer, alignd.json and model card; merged/ when the spec asks for it."""
        from trainer.models import is_peft

        run = self.run
        unwrapped = run.accelerator.unwrap_model(self.model)
        unwrapped.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        info = alignd_json(run, kind, state, adapter=is_peft(unwrapped))
        merge_lora = kind == "final" and run.spec.lora is not None and run.spec.lora.merge
        if merge_lora and is_peft(unwrapped):
            merged = unwrapped.merge_and_unload()
            merged.save_pretrained(str(folder / "merged"), safe_serialization=True)
            self.tokenizer.save_pretrained(str(folder / "merged"))
            info["merged_model"] = "merged"
        (folder / "alignd.json").write_text(json.dumps(info, indent=2, default=jsonable))
        (folder / "README.md").write_text(model_card(info))

    def _write_training_state(self, folder: Path, state: TrainState) -> None:
        folder.mkdir()
        (folder / "state.json").write_text(json.dumps(asdict(state)))
        torch.save(
            {
                "optimizer": self.training.optimizer.state_dict(),
                "scheduler": self.training.scheduler.state_dict(),
                "rng": rng_state(),
                "extra": self.extra_state() if self.extra_state is not None else {},
            },
            folder / "state.pt",
        )


def checkpoint_dir(run: Run, kind: str, step: int) -> Path:
    """final/ and best/ (the latest best replaces the one before), checkpoints/step-N/ for intermediate ones."""
    return run.output / kind if kind in ("final", "best") else run.output / "checkpoints" / f"step-{step:08d}"


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
    try:
        blob = torch.load(ts / "state.pt", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TrainError(
            "invalid_resume",
            f"{ts / 'state.pt'} holds objects other than tensors and plain values, and loading them could run "
            "code, so it is refused: resume from an intermediate checkpoint written by this version of alignd",
        ) from exc
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return state, blob["extra"]


# --- alignd.json and the model card --------------------------------------------------------------


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


def alignd_json(run: Run, kind: str, state: TrainState, *, adapter: bool) -> dict[str, Any]:
    """What alignd.json records about a checkpoint: who made it, from what, with which settings."""
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
