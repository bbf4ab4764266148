"""Where one training step's memory goes, beside the planner's terms for the same run.

    PYTHONPATH=. python bench/gpu_memory_profile.py --model DIR --algorithm dpo [--spec SPEC.json]
        [--steps 1] [--out OUT] [--gpu H200] [--data-lengths] [--top 25] [--json]

Written to find why the planner's predicted peak is 12-30% above the measured
`torch.cuda.max_memory_allocated` of the H200 runs (docs/plan.md, "On a GPU"). The run is the trainer
itself (`trainer.cli.run_command`, in this process) for `--steps` optimizer steps of `--algorithm`, with
bench/gpu_check.py's spec for it (its data, batch and lengths: GPU run 3) unless `--spec` names a trainer
spec; `--model` is a model folder (a folder with only config.json and a tokenizer gets random weights,
as bench/gpu_check.py does). Recorded during the run:

- saved for backward (`torch.autograd.graph.saved_tensors_hooks`, any device): the bytes of every
  tensor autograd keeps, by the innermost module type whose forward saved it (outside any module: the
  innermost alignd frame) and dtype; parameters are left out. Printed: the groups alive together at
  the largest total alive, and everything saved during the run. Storages are counted once;
  inside a non-reentrant gradient-checkpointing region the checkpoint's own hooks replace these.
- on CUDA, `torch.cuda.memory._record_memory_history()` and `_snapshot()`: the trace is replayed to
  the moment the allocated bytes peak, and the blocks alive then are printed, largest first, with the
  innermost alignd (trainer/, api/) and library (transformers, peft, torch) frames of the stack that
  allocated each, then summed by alignd frame.

Beside them, the planner's memory terms for the same run as job creation plans it (one `--gpu` in
bf16, bench/plan_gpu_compare.py's `predict`; `--data-lengths`: at the train file's token lengths,
through the model's own tokenizer). On CPU only the saved tensors and the planner's terms are printed.
Nothing here changes a formula.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MIB = 2**20
TRACE_ENTRIES = 2_000_000
"""Allocator events kept (a ring buffer: a longer run loses its first ones, and the peak may be wrong)."""
ALIGND_DIRS = (str(ROOT / "trainer") + "/", str(ROOT / "api") + "/")
LIBRARIES = ("/transformers/", "/peft/", "/accelerate/", "/torch/")


def _alignd_frame(filename: str, name: str, line: int) -> str:
    return f"{Path(filename).relative_to(ROOT)}:{line} {name}"


class SavedTensors:
    """Bytes autograd saves for backward, grouped by (innermost module type or alignd frame, dtype).

    Use as a context manager around the step(s): global module forward hooks keep the stack of module
    types being run; the pack hook charges each tensor's storage (once, whichever tensor saves it
    first) to the top of that stack, and a weakref finalizer takes it off the live total when the last
    saved tensor of that storage dies (after its backward)."""

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.params: set[int] = set()
        self.live: dict[int, list[Any]] = {}  # storage ptr -> [saved tensors alive, bytes, group]
        self.live_by_group: Counter[tuple[str, str]] = Counter()
        self.live_bytes = 0
        self.peak_bytes = 0
        self.at_peak: Counter[tuple[str, str]] = Counter()
        self.total: Counter[tuple[str, str]] = Counter()
        self.parameter_saves = 0
        self._handles: list[Any] = []
        self._hooks: Any = None

    def __enter__(self) -> SavedTensors:
        import torch
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

        def before(module: torch.nn.Module, _args: Any) -> None:
            for p in module.parameters(recurse=False):
                self.params.add(p.untyped_storage().data_ptr())
            self.stack.append(type(module).__name__)

        def after(_module: torch.nn.Module, _args: Any, _output: Any) -> None:
            if self.stack:
                self.stack.pop()

        self._handles = [register_module_forward_pre_hook(before), register_module_forward_hook(after)]
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)
        for handle in self._handles:
            handle.remove()

    def _group(self) -> str:
        if self.stack:
            return self.stack[-1]
        for frame in reversed(traceback.extract_stack()):
            if frame.filename.startswith(ALIGND_DIRS):
                return _alignd_frame(frame.filename, frame.name, frame.lineno or 0)
        return "(outside modules and alignd)"

    def _pack(self, t: Any) -> Any:
        import torch

        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return t
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0:
            return t
        if ptr in self.params:
            self.parameter_saves += 1
            return t
        entry = self.live.get(ptr)
        if entry is None:
            key = (self._group(), str(t.dtype).removeprefix("torch."))
            entry = self.live[ptr] = [0, storage.nbytes(), key]
            self.live_by_group[key] += entry[1]
            self.total[key] += entry[1]
            self.live_bytes += entry[1]
            if self.live_bytes > self.peak_bytes:
                self.peak_bytes = self.live_bytes
                self.at_peak = Counter(self.live_by_group)
        entry[0] += 1
        weakref.finalize(t, self._release, ptr)
        return t

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self.live[ptr]
            self.live_by_group[entry[2]] -= entry[1]
            self.live_bytes -= entry[1]

    def report(self) -> dict[str, Any]:
        def rows(counts: Counter[tuple[str, str]]) -> list[dict[str, Any]]:
            return [
                {"group": g, "dtype": d, "mb": round(n / MIB, 2)}
                for (g, d), n in sorted(counts.items(), key=lambda kv: -kv[1])
                if n > 0
            ]

        return {
            "peak_alive_mb": round(self.peak_bytes / MIB, 2),
            "alive_at_peak": rows(self.at_peak),
            "saved_during_run_mb": round(sum(self.total.values()) / MIB, 2),
            "saved_during_run": rows(self.total),
            "parameter_saves_left_out": self.parameter_saves,
        }


def _frames(frames: list[dict[str, Any]]) -> tuple[str, str]:
    """(innermost alignd frame, innermost library frame) of a recorded stack (innermost first)."""
    alignd = next((f for f in frames if str(f.get("filename", "")).startswith(ALIGND_DIRS)), None)
    library = next((f for f in frames if any(lib in str(f.get("filename", "")) for lib in LIBRARIES)), None)
    where = _alignd_frame(alignd["filename"], alignd["name"], alignd["line"]) if alignd else "-"
    lib = (
        f"{str(library['filename']).rsplit('/site-packages/', 1)[-1]}:{library['line']} {library['name']}"
        if library
        else "-"
    )
    return where, lib


def alive_at_peak(snapshot: dict[str, Any], device: int, baseline: int, top: int) -> dict[str, Any]:
    """Replay the allocator trace: the allocated bytes' peak, and the blocks alive at that moment."""
    trace = snapshot["device_traces"][device]
    # a block counts until its free completes, as torch.cuda._memory_viz counts (older traces: requested)
    free = "free_completed" if any(e["action"] == "free_completed" for e in trace) else "free_requested"
    allocated, peak, peak_at = baseline, baseline, -1
    sizes: dict[int, int] = {}
    for i, event in enumerate(trace):
        action = event["action"]
        if action == "alloc":
            sizes[event["addr"]] = event["size"]
            allocated += event["size"]
            if allocated > peak:
                peak, peak_at = allocated, i
        elif action == free and event["addr"] in sizes:
            allocated -= sizes.pop(event["addr"])
    alive: dict[int, dict[str, Any]] = {}
    for event in trace[: peak_at + 1]:
        if event["action"] == "alloc":
            alive[event["addr"]] = event
        elif event["action"] == free:
            alive.pop(event["addr"], None)
    blocks = sorted(alive.values(), key=lambda e: -e["size"])
    by_frame: Counter[str] = Counter()
    for block in blocks:
        by_frame[_frames(block.get("frames") or [])[0]] += block["size"]
    return {
        "peak_allocated_mb": round(peak / MIB, 1),
        "allocated_before_recording_mb": round(baseline / MIB, 1),
        "trace_events": len(trace),
        "trace_truncated": len(trace) >= TRACE_ENTRIES,
        "blocks_alive": len(blocks),
        "largest": [
            {"mb": round(b["size"] / MIB, 2), "alignd": a, "library": lib}
            for b in blocks[:top]
            for a, lib in [_frames(b.get("frames") or [])]
        ],
        "by_alignd_frame": [{"frame": f, "mb": round(n / MIB, 1)} for f, n in by_frame.most_common(top)],
    }


def step_spec(algorithm: str, model: Path, work: Path, spec_path: Path | None, steps: int) -> dict[str, Any]:
    if spec_path is not None:
        spec = json.loads(spec_path.read_text())
    else:
        from gpu_check import specs

        spec = specs(model, work, steps, steps)[algorithm]
    hyperparameters = {**(spec.get("hyperparameters") or {}), "max_steps": steps}
    return {**spec, "algorithm": algorithm, "hyperparameters": hyperparameters, "base_model": str(model), "seed": 0}


def profile(
    algorithm: str,
    model_dir: Path,
    work: Path,
    *,
    spec_path: Path | None = None,
    steps: int = 1,
    gpu: str = "H100",
    data_lengths: bool = False,
    top: int = 25,
) -> dict[str, Any]:
    import torch
    from gpu_check import model_folder
    from plan_gpu_compare import predict

    from trainer.cli import run_command

    work.mkdir(parents=True, exist_ok=True)
    model = model_folder(model_dir, work)
    spec = step_spec(algorithm, model, work, spec_path, steps)
    folder = work / f"profile-{algorithm}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.json").write_text(json.dumps(spec))
    events = folder / "events.jsonl"
    events.unlink(missing_ok=True)

    cuda = torch.cuda.is_available()
    baseline = 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.memory._record_memory_history(stacks="python", max_entries=TRACE_ENTRIES)
    with SavedTensors() as saved:
        rc = run_command(str(folder / "spec.json"), str(folder / "out"), None, str(events))
    result: dict[str, Any] = {"algorithm": algorithm, "device": "cuda" if cuda else "cpu", "rc": rc, "spec": spec}
    if cuda:
        snapshot = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        result["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / MIB, 1)
        result["allocator"] = alive_at_peak(snapshot, torch.cuda.current_device(), baseline, top)
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    metrics = [e["values"] for e in lines if e["type"] == "metrics"]
    result["errors"] = [e for e in lines if e["type"] == "error"]
    result["peak_memory_mb"] = max((m["peak_memory_mb"] for m in metrics), default=None)
    result["saved_for_backward"] = saved.report()
    run = {"algorithm": algorithm, "spec": spec, "model_config": str(model / "config.json")}
    planned = predict(run, gpu, None, model if data_lengths else None)
    memory = planned["plan"]["memory"]
    result["planner"] = {
        "gpu": gpu,
        "gradient_checkpointing": planned["plan"]["gradient_checkpointing"],
        "terms_mb": {k.removesuffix("_bytes"): round(v / MIB, 1) for k, v in memory.items() if k.endswith("_bytes")},
        "peak_without_overhead_mb": round((memory["peak_bytes"] - memory["overhead_bytes"]) / MIB, 1),
        "notes": planned["notes"],
    }
    return result


def text(result: dict[str, Any]) -> str:
    out = [f"{result['algorithm']} on {result['device']}: trainer exit code {result['rc']}"]
    for error in result["errors"]:
        out.append(f"  error: {error.get('code')}: {error.get('message')}")
    out.append(f"  trainer's peak_memory_mb: {result['peak_memory_mb']}")
    if "max_memory_allocated_mb" in result:
        out.append(f"  torch.cuda.max_memory_allocated: {result['max_memory_allocated_mb']} MB")
    planner = result["planner"]
    out.append(
        f"\nPlanner ({planner['gpu']}, bf16, checkpointing {'on' if planner['gradient_checkpointing'] else 'off'}): "
        f"peak without the CUDA allowance {planner['peak_without_overhead_mb']} MB"
    )
    out += [f"  {k:<40} {v:>10.1f} MB" for k, v in planner["terms_mb"].items()]
    out += [f"  note: {n}" for n in planner["notes"]]
    saved = result["saved_for_backward"]
    out.append(f"\nSaved for backward, alive together at their peak: {saved['peak_alive_mb']} MB")
    out += [f"  {r['group']:<60} {r['dtype']:<9} {r['mb']:>10.2f} MB" for r in saved["alive_at_peak"]]
    out.append(f"Saved for backward during the run (all micro-batches): {saved['saved_during_run_mb']} MB")
    out += [f"  {r['group']:<60} {r['dtype']:<9} {r['mb']:>10.2f} MB" for r in saved["saved_during_run"]]
    out.append(f"  (parameters saved by their ops, left out: {saved['parameter_saves_left_out']} saves)")
    if "allocator" in result:
        alloc = result["allocator"]
        out.append(
            f"\nCUDA allocator at its peak: {alloc['peak_allocated_mb']} MB in {alloc['blocks_alive']} blocks "
            f"({alloc['allocated_before_recording_mb']} MB before recording, {alloc['trace_events']} trace events"
            f"{', TRUNCATED: raise TRACE_ENTRIES' if alloc['trace_truncated'] else ''})"
        )
        out += [f"  {b['mb']:>10.2f} MB  {b['alignd']:<50} {b['library']}" for b in alloc["largest"]]
        out.append("  by alignd frame:")
        out += [f"  {f['mb']:>10.1f} MB  {f['frame']}" for f in alloc["by_alignd_frame"]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model folder (config.json and tokenizer at least)")
    parser.add_argument("--algorithm", required=True, choices=["dpo", "reward", "sft", "grpo", "ppo"])
    parser.add_argument("--spec", type=Path, help="a trainer spec JSON (default: bench/gpu_check.py's for it)")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps (max_steps), default 1")
    parser.add_argument("--out", type=Path, default=Path("/tmp/alignd-memory-profile"), help="work folder")
    parser.add_argument("--gpu", default="H100", help="GPU kind of the planner's table (H100, H200, ...)")
    parser.add_argument("--data-lengths", action="store_true", help="plan at the train file's token lengths")
    parser.add_argument("--top", type=int, default=25, help="allocations and frames listed")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args()
    result = profile(
        args.algorithm,
        args.model,
        args.out,
        spec_path=args.spec,
        steps=args.steps,
        gpu=args.gpu,
        data_lengths=args.data_lengths,
        top=args.top,
    )
    (args.out / f"profile-{args.algorithm}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1) if args.json else text(result))


if __name__ == "__main__":
    main()
