"""`client.pipelines` against a live server (Postgres + Redis, and the embedded default on SQLite), its
worker running the fake trainer: a two-stage pipeline runs its second stage on the first's output,
a failed first stage skips the second, and a cancel stops the running stage."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from client import Client, ConflictError, Dataset, InvalidRequestError, Pipeline
from tests.live import LiveServer
from tests.worker.conftest import short_preference_pairs


@pytest.fixture
def dataset(alignd: Client, tmp_path: Path) -> Dataset:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(short_preference_pairs(32))
    return alignd.datasets.upload(path, name="pairs")


def two_dpo_stages(model: str, dataset: Dataset, max_steps: int = 2) -> list[dict[str, Any]]:
    hyperparameters = {"max_steps": max_steps, "batch_size": 2, "save_every": 1000}

    def job(base_model: str) -> dict[str, Any]:
        hp = hyperparameters
        return {"algorithm": "dpo", "base_model": base_model, "dataset_id": dataset.id, "hyperparameters": hp}

    return [{"name": "first", "job": job(model)}, {"name": "second", "job": job("stage:first")}]


def wait_for_stage(alignd: Client, pipeline_id: str, index: int, status: str, timeout: float = 60) -> Pipeline:
    deadline = time.monotonic() + timeout
    while (pipeline := alignd.pipelines.get(pipeline_id)).stages[index].status != status:
        assert time.monotonic() < deadline, f"stage {index} is {pipeline.stages[index].status}, not {status}"
        time.sleep(0.1)
    return pipeline


def test_a_pipeline_runs_its_second_stage_on_the_first_stages_output(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    created = alignd.pipelines.create(name="twice", stages=two_dpo_stages(server.model, dataset))
    # the answer is read after the first stage's job was sent: a fast worker may have claimed it already
    assert created.status == "running" and created.stages[0].status in ("queued", "running")
    assert created.stages[1].status == "pending"

    done = alignd.pipelines.wait(created.id, timeout=120, poll_interval=0.2)

    assert done.status == "succeeded", done
    first, second = (alignd.jobs.get(s.job_id or "") for s in done.stages)
    assert second.base_model == f"job:{first.id}" and second.name == "twice/second"
    assert done.output_checkpoint_id == second.output_checkpoint_id is not None
    assert created.id in [p.id for p in alignd.pipelines.list(status="succeeded")]
    with pytest.raises(ConflictError):
        alignd.pipelines.cancel(created.id)


def test_a_failed_first_stage_skips_the_second_and_the_pipeline_says_why(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    pipeline = alignd.pipelines.create(stages=two_dpo_stages(server.failing_model or "", dataset))

    done = alignd.pipelines.wait(pipeline.id, timeout=120, poll_interval=0.2)

    assert done.status == "failed" and done.error is not None and "row 3" in done.error.message
    assert [s.status for s in done.stages] == ["failed", "skipped"] and done.stages[1].job_id is None


def test_cancel_stops_the_running_stage_and_skips_the_rest(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    pipeline = alignd.pipelines.create(stages=two_dpo_stages(server.model, dataset, max_steps=100_000))
    wait_for_stage(alignd, pipeline.id, 0, "running")

    assert alignd.pipelines.cancel(pipeline.id).status in ("cancelling", "cancelled")
    done = alignd.pipelines.wait(pipeline.id, timeout=60, poll_interval=0.2)

    assert done.status == "cancelled" and [s.status for s in done.stages] == ["cancelled", "skipped"]


def test_an_invalid_stage_reference_is_refused_naming_the_field(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    stages = two_dpo_stages(server.model, dataset)
    stages[1]["job"]["base_model"] = "stage:second"
    with pytest.raises(InvalidRequestError) as refused:
        alignd.pipelines.create(stages=stages)
    assert refused.value.param == "stages[1].job.base_model"
