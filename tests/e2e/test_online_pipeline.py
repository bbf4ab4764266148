"""The online pipeline through the service: a `reward` job's output becomes a `model` component of a
reward-model spec, the spec scores completions on request, and a GRPO job trains against it on a
prompt dataset whose extra column (`answer`) reaches the rules. Postgres + Redis + `alignd worker`.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import alignd
from tests.e2e.test_end_to_end import _follow_events
from tests.shared_data import shared_data
from tests.worker.conftest import short_preference_pairs
from trainer.formats import iter_rows


def _wait_succeeded(http: httpx.Client, headers: dict[str, str], job_id: str) -> tuple[dict[str, Any], list[Any]]:
    events = _follow_events(http, headers, job_id, timeout=300)
    job = http.get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded", job
    return job, events


def _gsm8k_prompts(rows: int) -> bytes:
    """The shortest GSM8K questions of the first 200 rows, as uploaded by a user ({"question","answer"})."""
    import json

    first = [row for _, row in itertools.islice(iter_rows(str(shared_data("gsm8k-train.jsonl"))), 200)]
    picked = sorted(first, key=lambda row: len(row["question"]))[:rows]
    return "".join(json.dumps(row) + "\n" for row in picked).encode()


@pytest.mark.slow
def test_a_reward_job_output_scores_completions_and_drives_a_grpo_job(
    client: httpx.Client, auth: dict[str, str], tiny_model_dir: Path, run_alignd, tmp_path: Path
) -> None:
    alignd("models", "add", "tiny", str(tiny_model_dir))
    worker = run_alignd("worker")
    worker.wait_for_log(" ready.", timeout=120)

    pairs = client.post(
        "/v1/datasets", headers=auth, files={"file": ("pairs.jsonl", short_preference_pairs(), "application/jsonl")}
    ).json()
    reward_job = client.post(
        "/v1/jobs",
        headers=auth,
        json={
            "algorithm": "reward",
            "base_model": "tiny",
            "dataset_id": pairs["id"],
            "hyperparameters": {"max_steps": 3, "batch_size": 4, "max_length": 256, "max_prompt_length": 192},
        },
    ).json()
    _wait_succeeded(client, auth, reward_job["id"])

    spec = client.post(
        "/v1/reward-models",
        headers=auth,
        json={
            "name": "trained rm + answer",
            "components": [
                {"type": "model", "model": f"job:{reward_job['id']}", "name": "rm", "weight": 0.5},
                {"type": "rule", "rule": "contains", "column": "answer", "weight": 1.0},
            ],
        },
    )
    assert spec.status_code == 201, spec.text
    reward_model = spec.json()

    scored = client.post(
        f"/v1/reward-models/{reward_model['id']}/score",
        headers=auth,
        json={"prompt": "What is 2+3?", "completions": ["It is 5.", "No idea."], "fields": {"answer": "5"}},
    )
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert set(body["components"]) == {"rm", "contains"}
    assert body["components"]["contains"] == [1.0, 0.0]
    for total, rm, contains in zip(
        body["scores"], body["components"]["rm"], body["components"]["contains"], strict=True
    ):
        assert abs(total - (0.5 * rm + contains)) < 1e-4

    prompts = client.post(
        "/v1/datasets", headers=auth, files={"file": ("gsm8k.jsonl", _gsm8k_prompts(8), "application/jsonl")}
    ).json()
    assert prompts["kind"] == "prompt", prompts
    started = time.monotonic()
    grpo = client.post(
        "/v1/jobs",
        headers=auth,
        json={
            "algorithm": "grpo",
            "base_model": "tiny",
            "dataset_id": prompts["id"],
            "reward_model_id": reward_model["id"],
            "hyperparameters": {
                "max_steps": 2,
                "batch_size": 2,
                "num_generations": 2,
                "max_new_tokens": 8,
                "max_prompt_length": 192,
                "max_length": 256,
                "learning_rate": 1e-3,
                "beta": 0.04,  # a KL term (GRPO's default is 0, no reference model): its path runs here too
            },
        },
    )
    assert grpo.status_code == 201, grpo.text
    job, events = _wait_succeeded(client, auth, grpo.json()["id"])

    metrics = [e["data"]["values"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 2, f"expected 2 metrics events in {time.monotonic() - started:.0f}s"
    for values in metrics:
        assert {"reward", "rewards/rm", "rewards/contains", "kl", "completions/mean_length"} <= set(values)
    samples = [e["data"] for e in events if e["type"] == "sample"]
    assert samples, "a GRPO job shows what it samples"
    series = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["series"]
    assert [step for step, _ in series["reward"]] == [1, 2]
    assert job["output_checkpoint_id"]
