"""The openai SDK against the embedded default (`alignd serve --data-dir D`: SQLite, its own worker,
the real trainer on a tiny model): a DPO file in OpenAI's format trains to a model that downloads
through alignd's checkpoint endpoint and loads with from_pretrained.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
import time
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.fine_tuning import FineTuningJob

from tests.e2e.conftest import alignd, clean_environment
from tests.e2e.test_end_to_end import _assert_loads_and_differs
from tests.services import free_port
from tests.shared_data import shared_data


def shortest_openai_dpo_rows(count: int) -> bytes:
    lines = shared_data("orca-dpo-pairs.openai-dpo.jsonl").read_text().splitlines(keepends=True)
    return "".join(sorted(lines, key=len)[:count]).encode()


@pytest.mark.slow
def test_the_openai_sdk_fine_tunes_on_the_embedded_default_and_the_model_downloads(
    tiny_model_dir: Path, run_alignd, tmp_path: Path
) -> None:
    env = clean_environment()
    data_dir = tmp_path / "alignd-data"
    alignd("models", "add", "tiny", str(tiny_model_dir), "--data-dir", str(data_dir), env=env)
    key = alignd("keys", "create", "--tenant", "acme", "--data-dir", str(data_dir), env=env).strip().splitlines()[-1]
    port = free_port()
    serve = run_alignd("serve", "--data-dir", str(data_dir), "--port", str(port), env=env)
    serve.wait_for_log("Uvicorn running", timeout=120)
    base = f"http://127.0.0.1:{port}"

    with openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60) as client:
        file = client.files.create(file=("orca.jsonl", io.BytesIO(shortest_openai_dpo_rows(8))), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=file.id,
            method={
                "type": "dpo",
                "dpo": {"hyperparameters": {"batch_size": 4, "n_epochs": 1, "learning_rate_multiplier": 1000}},
            },
        )
        other = client.fine_tuning.jobs.create(model="tiny", training_file=file.id, method={"type": "dpo"})
        assert client.fine_tuning.jobs.cancel(other.id).status == "cancelled"
        with pytest.raises(openai.ConflictError) as not_pausable:
            client.fine_tuning.jobs.pause(other.id)
        assert not_pausable.value.code == "job_not_pausable"

        # Paused at once if still queued, or at its next step boundary (shown as running until then).
        assert client.fine_tuning.jobs.pause(job.id).status in ("paused", "running")
        deadline = time.monotonic() + 300
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status != "paused":
            assert time.monotonic() < deadline and job.status in ("queued", "running"), f"job {job.status}"
            time.sleep(0.5)
        assert client.fine_tuning.jobs.resume(job.id).status in ("queued", "running")

        deadline = time.monotonic() + 300
        while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {job.status}"
            time.sleep(1)
        assert isinstance(job, FineTuningJob)
        events = list(client.fine_tuning.jobs.list_events(job.id, limit=50))
        assert job.status == "succeeded", (job.error, [e.message for e in events][:5])
        assert events[0].message == "The job has successfully completed"
        assert [e.data["step"] for e in events if e.type == "metrics"] == [2, 1]  # type: ignore[index]

        checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0]  # the final one (a pause may add one)
        assert checkpoint.step_number == 2 and checkpoint.metrics.train_loss is not None
        assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [other.id, job.id]

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        download = http.get(f"/v1/checkpoints/{checkpoint.id}/download")
        assert download.status_code == 200
        folder = tmp_path / "model"
        with tarfile.open(fileobj=io.BytesIO(download.content)) as tar:
            tar.extractall(folder, filter="data")
    assert json.loads((folder / "alignd.json").read_text())["job_id"] == job.id
    _assert_loads_and_differs(folder, tiny_model_dir)
    assert serve.stop() == 128 + signal.SIGTERM
