"""GPU check: one job through the service with a CUDA worker (never in CI; no test needs a GPU).

    python bench/gpu_service.py --model DIR --out OUT [--steps 10]

Starts `alignd serve` on the embedded defaults (SQLite database and broker, the embedded worker) in a
fresh data directory, adds the model folder to the models directory, uploads real Orca pairs through
the REST API with the Python client, runs a DPO LoRA job at `precision: auto` (bf16 on a GPU that
supports it), follows its event stream to the end, downloads the checkpoint (sha256 verified), and
writes OUT/gpu_service.json: the job's final status, its per-step metrics (peak_memory_mb is
torch.cuda.max_memory_allocated on a CUDA worker), the device the trainer reported, and timings.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from client import Client  # noqa: E402 (the repository root is put on the path first)

ALIGND = [sys.executable, "-c", "import sys; from cli.main import app; sys.argv[0] = 'alignd'; app()"]


def alignd(data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [*ALIGND, *args, "--data-dir", str(data_dir)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a Hugging Face model folder with weights")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--timeout", type=float, default=240)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # `timeout` still gets the report written
    started = time.monotonic()
    report: dict[str, Any] = {"ok": False}
    data_dir = Path(tempfile.mkdtemp(prefix="alignd-gpu-service-"))
    alignd(data_dir, "migrate")
    key = alignd(data_dir, "keys", "create", "--tenant", "gpu").strip().splitlines()[-1]
    alignd(data_dir, "models", "add", "smollm2", str(args.model.resolve()))
    log = open(args.out / "gpu_service_serve.log", "wb")  # noqa: SIM115 (open for the server's lifetime)
    server = subprocess.Popen(
        [*ALIGND, "serve", "--data-dir", str(data_dir), "--port", str(args.port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    try:
        client = Client(f"http://127.0.0.1:{args.port}", api_key=key, timeout=60)
        deadline = time.monotonic() + 120
        while not client.ready():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"alignd serve did not come up (exit {server.poll()})")
            time.sleep(0.5)
        report["ready_s"] = time.monotonic() - started
        rows = (ROOT / "data" / "orca-dpo-pairs.openai-dpo.jsonl").read_text().splitlines()[: args.steps * 8]
        train = data_dir / "orca-train.jsonl"
        train.write_text("\n".join(rows) + "\n")
        dataset = client.datasets.upload(train, name="orca-train")
        submitted = time.monotonic()
        job = client.jobs.create(
            algorithm="dpo",
            base_model="smollm2",
            dataset_id=dataset.id,
            hyperparameters={"batch_size": 8, "max_steps": args.steps, "max_length": 1024, "learning_rate": 5e-5},
            lora={"r": 16, "alpha": 32},
            seed=0,
            name="gpu-service-dpo",
        )
        job = client.jobs.wait(job.id, timeout=args.timeout)
        report["job_s"] = time.monotonic() - submitted
        report["status"] = job.status
        report["error"] = job.error
        series = client.jobs.metrics(job.id).series
        report["steps"] = len(series.get("loss", []))
        report["peak_memory_mb"] = max((v for _, v in series.get("peak_memory_mb", [])), default=None)
        report["step_time"] = [round(v, 4) for _, v in series.get("step_time", [])]
        report["losses"] = [round(v, 5) for _, v in series.get("loss", [])]
        if job.status == "succeeded" and job.output_checkpoint_id:
            got = client.checkpoints.download(job.output_checkpoint_id, data_dir / "ckpt.tar")
            report["checkpoint_bytes"] = got.bytes
            report["ok"] = True
    except (Exception, SystemExit) as exc:  # the report says what broke; the log beside it says why
        report["exception"] = repr(exc)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        worker_logs = sorted(data_dir.rglob("*.log"))
        report["worker_log_tail"] = {str(p.name): p.read_text(errors="replace")[-6000:] for p in worker_logs[:4]}
        report["total_s"] = time.monotonic() - started
        (args.out / "gpu_service.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({k: v for k, v in report.items() if k != "worker_log_tail"}), flush=True)


if __name__ == "__main__":
    main()
