"""`python -m trainer run SPEC.json --output DIR [--resume CHECKPOINT_DIR] [--events FILE]` (DESIGN §7).

Exit codes: 0 after a `done` event, 1 after an `error` event, 143 on SIGTERM (nothing more is saved),
75 after a `stopped` event (SIGUSR1: saved at a step boundary and stopped; trainer/signals.py).
Every failure the user can fix ends in an `error` event whose message says what to change.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from trainer.config import DATASET_KIND, EvaluateConfig, TrainSpec

# algorithm -> module with a `train(run)` function
ALGORITHMS = {
    "dpo": "trainer.dpo",
    "reward": "trainer.reward",
    "sft": "trainer.sft",
    "grpo": "trainer.grpo",
    "ppo": "trainer.ppo",
}


def _validation_message(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{where}{'.' + loc if loc else ''}: {err['msg']}")
    return "; ".join(parts)


def run_command(spec_path: str, output: str, resume: str | None, events_path: str | None) -> int:
    """Run one training job; returns the process exit code."""
    from trainer.data import DataError
    from trainer.events import Events
    from trainer.models import ModelLoadError
    from trainer.run import Run, TrainError, make_accelerator
    from trainer.signals import (
        STOPPED_EXIT_CODE,
        Stopped,
        Terminated,
        clear_save_and_stop,
        install_save_and_stop_handler,
        install_sigterm_handler,
    )

    install_sigterm_handler()
    install_save_and_stop_handler()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    accelerator = make_accelerator()
    events = Events(events_path, enabled=accelerator.is_main_process)
    try:
        try:
            spec = TrainSpec.model_validate_json(Path(spec_path).read_text())
        except OSError as exc:
            raise TrainError("invalid_spec", f"cannot read the spec file {spec_path}: {exc}") from exc
        except ValidationError as exc:
            raise TrainError("invalid_spec", _validation_message(exc, "spec")) from exc
        try:
            config = spec.config()
        except ValidationError as exc:
            raise TrainError("invalid_hyperparameters", _validation_message(exc, "hyperparameters")) from exc
        if isinstance(config, EvaluateConfig):  # scores models; no Run, no checkpoint
            from trainer.evaluate import evaluate

            if accelerator.num_processes > 1:
                raise TrainError(
                    "unsupported_configuration", "evaluate runs on one process; start it without accelerate launch"
                )

            events.log(
                f"evaluate on {spec.train_file}, {accelerator.num_processes} process(es) on {accelerator.device.type}"
            )
            evaluate(spec, config, events, accelerator.device)
            events.emit("done")
            return 0
        if resume is not None and not Path(resume).is_dir():
            raise TrainError("invalid_resume", f"--resume {resume}: no such checkpoint folder")
        run = Run(
            spec=spec,
            config=config,
            output=Path(output),
            events=events,
            accelerator=accelerator,
            resume=Path(resume) if resume else None,
        )
        run.output.mkdir(parents=True, exist_ok=True)
        events.log(
            f"{spec.algorithm} on {spec.base_model} ({DATASET_KIND[spec.algorithm]} data {spec.train_file}), "
            f"{accelerator.num_processes} process(es) on {accelerator.device.type}"
        )
        module = importlib.import_module(ALGORITHMS[spec.algorithm])
        module.train(run)
        events.emit("done")
        return 0
    except Terminated:
        events.log("terminated by SIGTERM; nothing more saved", level="warning")
        return 143
    except Stopped as stop:
        saved = f"saved {stop.checkpoint}" if stop.checkpoint else "its latest checkpoint is already saved"
        events.log(f"stopped on request at step {stop.step}; {saved}; --resume continues from it")
        events.emit("stopped", step=stop.step, checkpoint=stop.checkpoint)
        return STOPPED_EXIT_CODE
    except TrainError as exc:
        events.emit("error", code=exc.code, message=exc.message)
    except ModelLoadError as exc:
        events.emit("error", code="model_load_failed", message=str(exc))
    except DataError as exc:
        events.emit("error", code="invalid_dataset", message=str(exc))
    except ImportError as exc:
        events.emit("error", code="unsupported_algorithm", message=f"this trainer cannot run it yet: {exc}")
    except Exception as exc:
        import torch

        traceback.print_exc(file=sys.stderr)
        if isinstance(exc, torch.OutOfMemoryError):
            events.emit(
                "error",
                code="out_of_memory",
                message=f"out of memory: lower micro_batch_size or max_length, or use LoRA ({exc})",
            )
        else:
            events.emit("error", code="internal_error", message=f"{type(exc).__name__}: {exc}")
    finally:
        events.close()
        clear_save_and_stop()
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer", description="alignd trainer")
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="train according to SPEC.json")
    run_p.add_argument("spec", help="TrainSpec JSON file")
    run_p.add_argument("--output", required=True, help="output folder (checkpoints/, final/)")
    run_p.add_argument("--resume", help="intermediate checkpoint folder to resume from")
    run_p.add_argument("--events", help="append JSON-lines events to this file (default: stdout)")
    sub.add_parser("schema", help="print the JSON schema of the spec")
    args = parser.parse_args(argv)
    if args.command == "schema":
        print(json.dumps(TrainSpec.model_json_schema(), indent=2))
        return 0
    return run_command(args.spec, args.output, args.resume, args.events)
