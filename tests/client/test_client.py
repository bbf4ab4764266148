"""Every call of the Python client against a live `alignd serve` (Postgres + Redis, and the embedded
default), jobs run by a real worker process with the fake trainer (tests/live.py)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from pathlib import Path

import pytest

from client import (
    AlignError,
    APIConnectionError,
    AuthenticationError,
    Client,
    ConflictError,
    Dataset,
    InvalidRequestError,
    Job,
    NotFoundError,
)
from tests.live import CuttingProxy, LiveServer
from tests.services import free_port
from tests.worker.conftest import short_preference_pairs

HYPERPARAMETERS = {"max_steps": 6, "batch_size": 2, "save_every": 3}


@pytest.fixture
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(short_preference_pairs(32))
    return path


@pytest.fixture
def dataset(alignd: Client, pairs_file: Path) -> Dataset:
    return alignd.datasets.upload(pairs_file, name="pairs")


def submit(alignd: Client, server: LiveServer, dataset: Dataset, **hyperparameters: int) -> Job:
    return alignd.jobs.create(
        algorithm="dpo",
        base_model=server.model,
        dataset_id=dataset.id,
        hyperparameters={**HYPERPARAMETERS, **hyperparameters},
    )


def wait_for_status(alignd: Client, job_id: str, status: str, timeout: float = 60) -> Job:
    deadline = time.monotonic() + timeout
    while (job := alignd.jobs.get(job_id)).status != status:
        assert time.monotonic() < deadline, f"job {job_id} is {job.status}, not {status}"
        time.sleep(0.1)
    return job


def test_datasets_upload_with_progress_then_validate_list_get_rows_and_delete(alignd: Client, pairs_file: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    size = pairs_file.stat().st_size

    dataset = alignd.datasets.upload(pairs_file, name="pairs", progress=lambda sent, total: calls.append((sent, total)))

    assert (dataset.name, dataset.kind, dataset.rows, dataset.bytes) == ("pairs", "preference", 32, size)
    assert dataset.sha256 == hashlib.sha256(pairs_file.read_bytes()).hexdigest()
    assert calls[-1] == (size, size) and [sent for sent, _ in calls] == sorted(sent for sent, _ in calls)
    checked = alignd.datasets.validate(pairs_file)
    assert checked.valid and (checked.rows, checked.sha256, checked.format) == (32, dataset.sha256, dataset.format)
    with open(pairs_file, "rb") as fh:  # a file object works as well as a path
        second = alignd.datasets.upload(fh, name="again")
    assert [d.id for d in alignd.datasets.list(page_size=1)][:2] == [second.id, dataset.id]
    assert alignd.datasets.get(dataset.id) == dataset
    rows = alignd.datasets.rows(dataset.id, offset=30, limit=5)
    lines = pairs_file.read_text().splitlines()
    assert rows.data == [json.loads(lines[30]), json.loads(lines[31])] and not rows.has_more

    alignd.datasets.delete(second.id)
    with pytest.raises(NotFoundError) as missing:
        alignd.datasets.get(second.id)
    assert (missing.value.status_code, missing.value.code) == (404, "not_found")


def test_an_invalid_dataset_raises_invalid_request_with_its_line_level_errors(alignd: Client, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    bad.write_text(f"{good}\n{json.dumps({'prompt': '2+2?', 'chosen': '', 'rejected': '5'})}\nnot json\n")

    for call in (alignd.datasets.upload, alignd.datasets.validate):
        with pytest.raises(InvalidRequestError) as refused:
            call(bad)
        assert refused.value.code == "invalid_dataset" and refused.value.status_code == 422
        assert {detail["line"] for detail in refused.value.details} == {2, 3}
    assert not [d for d in alignd.datasets.list() if d.name == "bad.jsonl"]


def test_reward_models_are_created_listed_scored_and_deleted(alignd: Client) -> None:
    reward = alignd.reward_models.create(
        name="exact", components=[{"type": "rule", "rule": "exact_match", "weight": 1.0}]
    )

    assert reward.id in [r.id for r in alignd.reward_models.list(page_size=1)]
    assert alignd.reward_models.get(reward.id) == reward
    scores = alignd.reward_models.score(reward.id, prompt="2+2?", completions=["4", "5"], fields={"answer": "4"})
    assert scores.scores == [1.0, 0.0] and list(scores.components.values()) == [[1.0, 0.0]]
    alignd.reward_models.delete(reward.id)
    with pytest.raises(NotFoundError):
        alignd.reward_models.get(reward.id)


def test_a_job_streams_live_to_success_then_its_events_metrics_and_checkpoints_are_read_and_downloaded(
    server: LiveServer, alignd: Client, dataset: Dataset, tmp_path: Path
) -> None:
    key = f"run-{uuid.uuid4()}"
    job = alignd.jobs.create(
        algorithm="dpo",
        base_model=server.model,
        dataset_id=dataset.id,
        hyperparameters=HYPERPARAMETERS,
        idempotency_key=key,
    )
    repeated = alignd.jobs.create(  # a retry with the same key gets the first job, whatever the body says
        algorithm="dpo", base_model=server.model, dataset_id=dataset.id, idempotency_key=key
    )
    assert repeated.id == job.id and job.status == "queued" and job.hyperparameters["beta"] == 0.1

    events = list(alignd.jobs.stream_events(job.id))

    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.data["status"] for e in events if e.type == "status"] == ["queued", "running", "succeeded"]
    assert [e.seq for e in alignd.jobs.events(job.id, page_size=4)] == seqs
    assert [e.seq for e in alignd.jobs.events(job.id, after=5)] == seqs[5:]
    done = alignd.jobs.wait(job.id, timeout=30)
    assert done.status == "succeeded" and done.progress.step == 6 and done.metrics["loss"] == pytest.approx(1 / 6)
    assert [step for step, _ in alignd.jobs.metrics(job.id).series["loss"]] == [1, 2, 3, 4, 5, 6]
    checkpoints = alignd.checkpoints.list(job.id)
    assert [(c.step, c.kind) for c in checkpoints] == [(3, "intermediate"), (6, "final")]
    assert alignd.jobs.checkpoints(job.id) == checkpoints
    final = alignd.checkpoints.get(done.output_checkpoint_id or "")
    assert final == checkpoints[-1]

    got = alignd.checkpoints.download(final.id, tmp_path / "final.tar", extract_to=tmp_path / "model")

    assert got.sha256 == final.sha256 == hashlib.sha256(got.path.read_bytes()).hexdigest()
    assert got.bytes == final.bytes and not (tmp_path / "final.tar.part").exists()
    assert json.loads((tmp_path / "model" / "config.json").read_text()) == {"step": 6}  # the fake trainer's


def test_jobs_list_walks_every_cursor_page_newest_first_and_filters(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    ids = [submit(alignd, server, dataset, max_steps=1, save_every=1000).id for _ in range(3)]
    for job_id in ids:
        alignd.jobs.wait(job_id, timeout=60, poll_interval=0.2)

    listed = [job.id for job in alignd.jobs.list(page_size=1)]

    assert [i for i in listed if i in ids] == ids[::-1] and len(listed) == len(set(listed))
    assert all(job.status == "succeeded" for job in alignd.jobs.list(status="succeeded", page_size=2))
    assert {job.id for job in alignd.jobs.list(algorithm="dpo")} >= set(ids)
    assert not list(alignd.jobs.list(algorithm="grpo"))


def test_cancel_stops_a_running_job_and_a_finished_job_answers_conflict(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    job = submit(alignd, server, dataset, max_steps=100_000, save_every=1000)
    wait_for_status(alignd, job.id, "running")

    assert alignd.jobs.cancel(job.id).status in ("cancelling", "cancelled")
    assert alignd.jobs.cancel(job.id).status in ("cancelling", "cancelled")  # idempotent
    assert alignd.jobs.wait(job.id, timeout=60, poll_interval=0.2).status == "cancelled"

    short = submit(alignd, server, dataset, max_steps=1, save_every=1000)
    assert alignd.jobs.wait(short.id, timeout=60, poll_interval=0.2).status == "succeeded"
    with pytest.raises(ConflictError) as finished:
        alignd.jobs.cancel(short.id)
    assert finished.value.code == "job_finished" and finished.value.status_code == 409


def test_pause_saves_and_frees_a_running_job_and_resume_continues_it_from_the_saved_step(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    job = submit(alignd, server, dataset, max_steps=100_000, save_every=100_000)
    wait_for_status(alignd, job.id, "running")
    while alignd.jobs.get(job.id).progress.step < 2:
        time.sleep(0.1)

    assert alignd.jobs.pause(job.id).status in ("pausing", "paused")
    paused = wait_for_status(alignd, job.id, "paused")
    assert alignd.jobs.pause(job.id).status == "paused"  # idempotent
    (saved,) = alignd.jobs.checkpoints(job.id)
    assert saved.kind == "intermediate" and saved.step == paused.progress.step

    assert alignd.jobs.resume(job.id).status in ("queued", "running")
    wait_for_status(alignd, job.id, "running")
    deadline = time.monotonic() + 60
    while not any(
        f"resuming from the checkpoint of step {saved.step}" in str(e.data) for e in alignd.jobs.events(job.id)
    ):
        assert time.monotonic() < deadline, "the resumed attempt did not start from the saved step"
        time.sleep(0.2)
    assert alignd.jobs.cancel(job.id).status in ("cancelling", "cancelled")
    assert alignd.jobs.wait(job.id, timeout=60, poll_interval=0.2).status == "cancelled"
    with pytest.raises(ConflictError) as cancelled:
        alignd.jobs.resume(job.id)
    assert cancelled.value.code == "job_not_resumable" and cancelled.value.status_code == 409


def test_a_failed_job_says_why(server: LiveServer, alignd: Client, dataset: Dataset) -> None:
    job = alignd.jobs.create(
        algorithm="dpo", base_model=server.failing_model or "", dataset_id=dataset.id, hyperparameters=HYPERPARAMETERS
    )

    failed = alignd.jobs.wait(job.id, timeout=60, poll_interval=0.2)

    assert failed.status == "failed" and failed.error is not None
    assert "row 3" in failed.error.message


def test_a_dropped_event_stream_resumes_with_last_event_id_without_gaps_or_duplicates(
    server: LiveServer, alignd: Client, dataset: Dataset
) -> None:
    job = submit(alignd, server, dataset, max_steps=30, save_every=10)
    proxy = CuttingProxy(server.url, match=b"/events/stream", after_bytes=900)
    try:
        with Client(proxy.url, api_key=server.key) as through_proxy:
            streamed = list(through_proxy.jobs.stream_events(job.id))
    finally:
        proxy.close()

    assert proxy.cut == 1
    heads = [h.decode().lower() for h in proxy.requests if b"/events/stream" in h]
    resumed_after = int(heads[1].split("last-event-id: ")[1].split("\r\n")[0])
    assert "last-event-id" not in heads[0] and resumed_after >= 1
    recorded = list(alignd.jobs.events(job.id))
    assert [e.seq for e in streamed] == [e.seq for e in recorded] == list(range(1, len(recorded) + 1))
    assert streamed == recorded and streamed[-1].data["status"] == "succeeded"


def test_an_interrupted_download_resumes_with_range_and_is_verified(
    server: LiveServer, alignd: Client, dataset: Dataset, tmp_path: Path
) -> None:
    job = alignd.jobs.wait(submit(alignd, server, dataset).id, timeout=60, poll_interval=0.2)
    checkpoint = alignd.checkpoints.get(job.output_checkpoint_id or "")
    proxy = CuttingProxy(server.url, match=b"/download", after_bytes=checkpoint.bytes // 2)
    try:
        with Client(proxy.url, api_key=server.key) as through_proxy:
            got = through_proxy.checkpoints.download(checkpoint.id, tmp_path / "ckpt.tar")
    finally:
        proxy.close()

    assert proxy.cut == 1
    heads = [h.decode().lower() for h in proxy.requests if b"/download" in h]
    offset = int(heads[1].split("range: bytes=")[1].split("-")[0])
    assert "range:" not in heads[0] and 0 < offset < checkpoint.bytes
    assert got.sha256 == checkpoint.sha256 == hashlib.sha256(got.path.read_bytes()).hexdigest()

    # A stale partial file that is not this archive's bytes is caught by the sha256 and fetched again.
    (tmp_path / "again.tar.part").write_bytes(b"x" * 100)
    again = alignd.checkpoints.download(checkpoint.id, tmp_path / "again.tar")
    assert again.path.read_bytes() == got.path.read_bytes()


def test_errors_carry_the_apis_code_message_and_param(server: LiveServer, alignd: Client, dataset: Dataset) -> None:
    with pytest.raises(NotFoundError) as missing:
        alignd.jobs.get("job_nope")
    assert missing.value.code == "not_found" and "job_nope" in missing.value.message
    with pytest.raises(InvalidRequestError) as invalid:
        submit(alignd, server, dataset, beta=-1)
    assert invalid.value.param == "hyperparameters.beta" and invalid.value.code == "invalid_request"
    with pytest.raises(AuthenticationError) as unauthenticated, Client(server.url, api_key="alignd_wrong") as wrong:
        wrong.jobs.get("job_nope")
    assert unauthenticated.value.status_code == 401
    with (
        pytest.raises(APIConnectionError),
        Client(f"http://127.0.0.1:{free_port()}", api_key="k", max_retries=1, initial_backoff=0.01) as nowhere,
    ):
        nowhere.datasets.get("ds_x")
    assert not Client(f"http://127.0.0.1:{free_port()}", api_key="k").ready()


def test_the_address_and_key_come_from_alignd_url_and_alignd_api_key(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch, dataset: Dataset
) -> None:
    monkeypatch.setenv("ALIGND_URL", server.url + "/v1")  # an openai-style base URL works too
    monkeypatch.setenv("ALIGND_API_KEY", server.key)
    with Client() as from_environment:
        assert from_environment.datasets.get(dataset.id) == dataset
        assert from_environment.ready()
    monkeypatch.delenv("ALIGND_API_KEY")
    with pytest.raises(AlignError, match="ALIGND_API_KEY"):
        Client()
