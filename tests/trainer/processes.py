"""Running the trainer CLI on several processes (accelerate launch, gloo on CPU) for the multi-process tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.trainer.online import of_type

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(
    tmp: Path, spec: dict[str, Any], name: str, processes: int, resume: Path | None = None, *, expect_ok: bool = True
) -> tuple[list[dict[str, Any]], Path]:
    """Run the trainer CLI on `processes` processes; returns (events, output folder)."""
    spec_file, out, events = tmp / f"{name}.json", tmp / name, tmp / f"{name}.events.jsonl"
    spec_file.write_text(json.dumps(spec))
    args = ["run", str(spec_file), "--output", str(out), "--events", str(events)]
    if resume is not None:
        args += ["--resume", str(resume)]
    if processes == 1:
        cmd = [sys.executable, "-m", "trainer", *args]
    else:
        cmd = [
            # --multi_gpu is accelerate's torch.distributed launcher; without a GPU the trainer's
            # Accelerator(cpu=True) joins a gloo group (`--cpu` alone would start one process, or mpirun)
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port()), "--module", "trainer", *args,
        ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in events.read_text().splitlines()] if events.exists() else []
    assert proc.returncode == 0 or not expect_ok, (proc.stderr[-3000:], of_type(lines, "error"))
    return lines, out
