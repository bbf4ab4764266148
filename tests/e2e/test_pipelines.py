"""A pipeline through real workers: reward model -> GRPO submitted once (Postgres + Redis + `alignd
worker`, the real trainer on the tiny model). The GRPO stage starts only once the reward stage
succeeded, and scores its samples with that stage's output."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.core.settings import Settings
from tests.e2e.conftest import alignd
from tests.e2e.test_online_pipeline import _gsm8k_prompts
from tests.worker.conftest import short_preference_pairs


def _wait_final(http: httpx.Client, headers: dict[str, str], pipeline_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pipeline = http.get(f"/v1/pipelines/{pipeline_id}", headers=headers).json()
        if pipeline["status"] in ("succeeded", "failed", "cancelled"):
            return pipeline
        time.sleep(1)
    raise AssertionError(f"pipeline {pipeline_id} still {pipeline['status']} after {timeout}s: {pipeline}")


@pytest.mark.slow
def test_a_reward_model_then_grpo_pipeline_runs_through_real_workers_grpo_scoring_with_the_rm_stage(
    client: httpx.Client, auth: dict[str, str], tiny_model_dir: Path, run_alignd, settings: Settings
) -> None:
    alignd("models", "add", "tiny", str(tiny_model_dir))
    worker = run_alignd("worker")
    worker.wait_for_log(" ready.", timeout=120)
    pairs = client.post(
        "/v1/datasets", headers=auth, files={"file": ("pairs.jsonl", short_preference_pairs(), "application/jsonl")}
    ).json()
    prompts = client.post(
        "/v1/datasets", headers=auth, files={"file": ("gsm8k.jsonl", _gsm8k_prompts(8), "application/jsonl")}
    ).json()
    lengths = {"max_length": 256, "max_prompt_length": 192}
    body = {
        "name": "rm-grpo",
        "stages": [
            {
                "name": "rm",
                "job": {
                    "algorithm": "reward",
                    "base_model": "tiny",
                    "dataset_id": pairs["id"],
                    "hyperparameters": {"max_steps": 2, "batch_size": 4, **lengths},
                },
            },
            {
                "name": "grpo",
                "job": {
                    "algorithm": "grpo",
                    "base_model": "tiny",
                    "dataset_id": prompts["id"],
                    "reward": [
                        {"type": "model", "model": "stage:rm", "name": "rm", "weight": 0.5},
                        {"type": "rule", "rule": "contains", "column": "answer", "weight": 1.0},
                    ],
                    "hyperparameters": {
                        "max_steps": 2, "batch_size": 2, "num_generations": 2, "max_new_tokens": 8, **lengths
                    },
                },
            },
        ],
    }  # fmt: skip
    created = client.post("/v1/pipelines", headers=auth, json=body)
    assert created.status_code == 201, created.text
    pipeline = _wait_final(client, auth, created.json()["id"], timeout=600)

    assert pipeline["status"] == "succeeded", pipeline
    rm_stage, grpo_stage = pipeline["stages"]
    assert rm_stage["status"] == grpo_stage["status"] == "succeeded"
    rm = client.get(f"/v1/jobs/{rm_stage['job_id']}", headers=auth).json()
    grpo = client.get(f"/v1/jobs/{grpo_stage['job_id']}", headers=auth).json()
    assert grpo["reward"][0]["model"] == f"job:{rm['id']}"
    assert grpo["started_at"] >= rm["finished_at"], "the GRPO stage ran after the reward stage it reads"
    waited = datetime.fromisoformat(grpo["started_at"]) - datetime.fromisoformat(rm["finished_at"])
    assert waited.total_seconds() < 10, f"sent by the worker that ran the reward stage, not a later resend: {waited}"
    assert pipeline["output_checkpoint_id"] == grpo["output_checkpoint_id"] is not None

    # The trainer was given the reward stage's output checkpoint as its reward model ...
    spec = json.loads(next((settings.resolved_work_dir / "jobs" / grpo["id"]).glob("attempt-*/SPEC.json")).read_text())
    model_component = next(c for c in spec["reward"] if c["type"] == "model")
    assert Path(model_component["model"]).name == rm["output_checkpoint_id"]
    # ... and scored every step with it.
    events = client.get(f"/v1/jobs/{grpo['id']}/events?limit=1000", headers=auth).json()["data"]
    metrics = [e["data"]["values"] for e in events if e["type"] == "metrics"]
    assert len(metrics) == 2 and all("rewards/rm" in values for values in metrics)
