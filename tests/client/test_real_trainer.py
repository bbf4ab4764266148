"""The four user actions through the client on plain `alignd serve` (embedded default: SQLite, its
embedded worker, the real trainer on the tiny model): upload, submit, watch live, download a folder
that `from_pretrained` loads, with weights that differ from the base model's."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from client import Client
from tests.live import LiveServer, live_server
from tests.worker.conftest import short_preference_pairs


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[LiveServer]:
    with live_server("embedded-real", tmp_path_factory.mktemp("live-real"), tiny_model_dir=tiny_model_dir) as live:
        yield live
        print(live.tail())


def test_upload_submit_watch_and_download_a_model_that_from_pretrained_loads(
    real_server: LiveServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(short_preference_pairs(8))
    with Client(real_server.url, api_key=real_server.key) as alignd:
        dataset = alignd.datasets.upload(pairs, name="pairs")
        job = alignd.jobs.create(
            algorithm="dpo",
            base_model=real_server.model,
            dataset_id=dataset.id,
            hyperparameters={
                "max_steps": 2,
                "batch_size": 2,
                "max_length": 128,
                "max_prompt_length": 96,
                "learning_rate": 1e-2,
            },
        )
        events = list(alignd.jobs.stream_events(job.id))
        done = alignd.jobs.wait(job.id, timeout=30)
        got = alignd.checkpoints.download(
            done.output_checkpoint_id or "", tmp_path / "m.tar", extract_to=tmp_path / "model"
        )

    assert done.status == "succeeded", done.error
    assert [e.data["step"] for e in events if e.type == "metrics"] == [1, 2]
    assert got.extracted_to is not None and (got.extracted_to / "alignd.json").is_file()
    tuned = AutoModelForCausalLM.from_pretrained(got.extracted_to)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    AutoTokenizer.from_pretrained(got.extracted_to)
    changed = [
        name for (name, p), q in zip(tuned.named_parameters(), base.parameters(), strict=True) if not torch.equal(p, q)
    ]
    assert changed, "the downloaded weights are the base model's"


def test_an_sft_then_dpo_pipeline_trains_dpo_on_the_sft_output(real_server: LiveServer, tmp_path: Path) -> None:
    from tests.api.helpers import real_lines

    pairs, rows = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl"
    pairs.write_bytes(short_preference_pairs(8))
    rows.write_bytes(real_lines("alpaca-en-demo.jsonl", 8))
    short = {"max_steps": 2, "batch_size": 2, "max_length": 128, "max_prompt_length": 96}
    with Client(real_server.url, api_key=real_server.key) as alignd:
        sft_data = alignd.datasets.upload(rows, name="sft")
        dpo_data = alignd.datasets.upload(pairs, name="pairs")
        pipeline = alignd.pipelines.create(
            name="sft-dpo",
            stages=[
                {"name": "sft", "job": {"algorithm": "sft", "base_model": real_server.model,
                                        "dataset_id": sft_data.id, "hyperparameters": short}},
                {"name": "dpo", "job": {"algorithm": "dpo", "base_model": "stage:sft",
                                        "dataset_id": dpo_data.id, "hyperparameters": short}},
            ],
        )  # fmt: skip
        done = alignd.pipelines.wait(pipeline.id, timeout=300, poll_interval=1)
        sft, dpo = (alignd.jobs.get(stage.job_id or "") for stage in done.stages)

    assert done.status == "succeeded", (done, sft.error, dpo.error)
    assert dpo.base_model == f"job:{sft.id}" and dpo.started_at and sft.finished_at
    assert dpo.started_at >= sft.finished_at
    assert done.output_checkpoint_id == dpo.output_checkpoint_id is not None
