"""`alignd pipelines create|get|list|cancel|wait` against a live server (tests/live.py, the fake trainer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.cli.test_remote_commands import alignd, ok
from tests.live import LiveServer
from tests.worker.conftest import short_preference_pairs


@pytest.fixture
def dataset_id(live_alignd: LiveServer, tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(short_preference_pairs(32))
    return str(json.loads(ok(alignd(live_alignd, "datasets", "upload", str(path), "--json")).stdout)["id"])


def pipeline_file(tmp_path: Path, model: str, dataset: str, max_steps: int) -> Path:
    job = {"algorithm": "dpo", "dataset_id": dataset, "hyperparameters": {"max_steps": max_steps, "batch_size": 2}}
    body = {
        "name": "twice",
        "stages": [
            {"name": "first", "job": {**job, "base_model": model}},
            {"name": "second", "job": {**job, "base_model": "stage:first"}},
        ],
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def test_create_from_yaml_then_wait_get_and_list(live_alignd: LiveServer, dataset_id: str, tmp_path: Path) -> None:
    text = ok(
        alignd(live_alignd, "pipelines", "create", str(pipeline_file(tmp_path, live_alignd.model, dataset_id, 2)))
    )
    assert text.stdout.startswith("pipe_") and "twice: running" in text.stdout and "pending" in text.stdout
    pipeline_id = text.stdout.split()[0]

    waited = alignd(live_alignd, "pipelines", "wait", pipeline_id, "--timeout", "120", "--json")
    assert waited.exit_code == 0, waited.output
    done = json.loads(waited.stdout)
    assert done["status"] == "succeeded" and [s["status"] for s in done["stages"]] == ["succeeded", "succeeded"]
    shown = ok(alignd(live_alignd, "pipelines", "get", pipeline_id)).stdout
    assert "output checkpoint: ckpt_" in shown and "second" in shown
    listed = json.loads(ok(alignd(live_alignd, "pipelines", "list", "--json", "--limit", "5")).stdout)
    assert pipeline_id in [p["id"] for p in listed]


def test_cancel_skips_the_stages_not_started_and_a_bad_file_is_a_usage_error(
    live_alignd: LiveServer,
    dataset_id: str,
    tmp_path: Path,
) -> None:
    path = pipeline_file(tmp_path, live_alignd.model, dataset_id, 100_000)
    created = json.loads(ok(alignd(live_alignd, "pipelines", "create", str(path), "--json")).stdout)
    cancelled = json.loads(ok(alignd(live_alignd, "pipelines", "cancel", created["id"], "--json")).stdout)
    assert cancelled["status"] in ("cancelling", "cancelled") and cancelled["stages"][1]["status"] == "skipped"
    waited = alignd(live_alignd, "pipelines", "wait", created["id"], "--timeout", "60")
    assert waited.exit_code == 2, waited.output

    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    result = alignd(live_alignd, "pipelines", "create", str(bad))
    assert result.exit_code == 2 and "stages" in result.output
