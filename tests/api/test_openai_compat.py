"""The real `openai` SDK pointed at a live alignd (`base_url=<alignd>/v1`, an alignd key).

The API runs in uvicorn on a loopback port; the test plays the worker by calling the real runner
(worker.runner.run_job) with tests/worker/fake_trainer.py as the trainer: the training itself is
not the point here, the OpenAI surface is. Every object the SDK returns is checked to be its typed
model, with no undeclared fields, every required field set, and valid under the SDK's own schema.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types import FileDeleted, FileObject
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.dpo_hyperparameters import DpoHyperparameters
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint
from openai.types.graders import MultiGrader, PythonGrader, ScoreModelGrader, StringCheckGrader, TextSimilarityGrader

from api.core.settings import Settings
from tests.conftest import TenantKey
from tests.hub_cache import cached_hub_model
from tests.services import free_port
from tests.shared_data import shared_data

FAKE_TRAINER = Path(__file__).parents[1] / "worker" / "fake_trainer.py"
HUB_MODEL = "org/tiny-model"  # a hub id: a MODEL_REF the API accepts (the fake trainer loads nothing)


@pytest.fixture
def live(settings: Settings) -> Iterator[str]:
    """alignd's API served by uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    from api.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def oai(live: str, tenant: TenantKey) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{live}/v1", api_key=tenant.key, max_retries=0, timeout=30) as client:
        yield client


@pytest.fixture
def work(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], threading.Thread]]:
    """Run a job as a worker would (the real runner, the fake trainer), in a background thread."""
    from worker import runner

    real = runner.trainer_command

    def command(spec: Path, output: Path, events: Path, resume: Path | None, s: Settings) -> list[str]:
        return [sys.executable, str(FAKE_TRAINER), *real(spec, output, events, resume, s)[3:]]

    monkeypatch.setattr(runner, "trainer_command", command)
    assert settings.hub_cache_dir is not None
    cached_hub_model(settings.hub_cache_dir, HUB_MODEL)  # the worker resolves hub ids only from the cache
    threads: list[threading.Thread] = []

    def start(job_id: str) -> threading.Thread:
        thread = threading.Thread(target=runner.run_job, args=(job_id, settings), daemon=True)
        thread.start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.join(60)


def assert_parsed(obj: Any) -> None:
    """A typed SDK model all the way down: no undeclared fields, required fields set, valid as declared."""
    assert isinstance(obj, openai.BaseModel), type(obj)
    assert not obj.model_extra, f"{type(obj).__name__} has fields the SDK does not declare: {obj.model_extra}"
    for name, field in type(obj).model_fields.items():
        value = getattr(obj, name)
        if field.is_required():
            assert value is not None, f"{type(obj).__name__}.{name} is required but null"
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, openai.BaseModel):
                assert_parsed(item)
    type(obj).model_validate(obj.model_dump(mode="json"))  # strict: real pydantic validation, not construct()


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def real_rows(name: str, n: int) -> bytes:
    with open(shared_data(name), "rb") as fh:
        return b"".join(fh.readline() for _ in range(n))


def rft_rows(n: int) -> bytes:
    """GSM8K questions as OpenAI reinforcement rows: the chat so far, and the final answer as a column."""
    rows = []
    with open(shared_data("gsm8k-train.jsonl")) as fh:
        for line in fh.readlines()[:n]:
            row = json.loads(line)
            final = row["answer"].rsplit("####", 1)[1].strip()
            rows.append({"messages": [{"role": "user", "content": row["question"]}], "answer": final})
    return jsonl(rows)


def upload(oai: openai.OpenAI, name: str, content: bytes) -> FileObject:
    file = oai.files.create(file=(name, io.BytesIO(content)), purpose="fine-tune")
    assert isinstance(file, FileObject)
    assert_parsed(file)
    return file


def wait_until_final(oai: openai.OpenAI, job_id: str, timeout: float = 60) -> list[FineTuningJobEvent]:
    """Poll the job's events (newest first) until the job is final; returns every event, oldest first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = oai.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return list(reversed(list(oai.fine_tuning.jobs.list_events(job_id, limit=4))))
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish in {timeout}s")


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_dpo_file_and_job_through_the_openai_sdk_train_and_show_events_checkpoints_and_the_model(
    oai: openai.OpenAI, work, live: str, tenant: TenantKey, client
) -> None:
    file = upload(oai, "orca.jsonl", real_rows("orca-dpo-pairs.openai-dpo.jsonl", 8))
    assert (file.filename, file.purpose, file.status) == ("orca.jsonl", "fine-tune", "processed")
    assert file.bytes == len(real_rows("orca-dpo-pairs.openai-dpo.jsonl", 8))
    assert oai.files.retrieve(file.id) == file
    assert [f.id for f in oai.files.list()] == [file.id]

    job = oai.fine_tuning.jobs.create(
        model=HUB_MODEL,
        training_file=file.id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 2, "learning_rate_multiplier": 3}},
        },
        suffix="orca",
        seed=7,
        metadata={"team": "alignment"},
    )
    assert isinstance(job, FineTuningJob)
    assert_parsed(job)
    assert (job.status, job.model, job.training_file, job.seed, job.metadata) == (
        "queued",
        HUB_MODEL,
        file.id,
        7,
        {"team": "alignment"},
    )
    assert job.method is not None and job.method.type == "dpo" and job.method.dpo is not None
    assert isinstance(job.method.dpo.hyperparameters, DpoHyperparameters)
    assert job.method.dpo.hyperparameters.model_dump() == {
        "batch_size": 2,
        "beta": 0.2,
        "learning_rate_multiplier": 3.0,
        "n_epochs": 2,
    }
    assert job.fine_tuned_model is None and job.finished_at is None
    # One row, two views: the native job carries our names and values.
    native = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json()
    assert native["algorithm"] == "dpo" and native["name"] == "orca"
    assert {k: native["hyperparameters"][k] for k in ("beta", "num_epochs", "batch_size", "learning_rate")} == {
        "beta": 0.2,
        "num_epochs": 2.0,
        "batch_size": 2,
        "learning_rate": pytest.approx(3e-6),
    }

    work(job.id)
    events = wait_until_final(oai, job.id)
    for event in events:
        assert isinstance(event, FineTuningJobEvent)
        assert_parsed(event)
    messages = [e.message for e in events if e.type == "message"]
    assert messages[0] == "Job queued" and messages[-1] == "The job has successfully completed"
    metrics = [e for e in events if e.type == "metrics"]
    assert [e.data["step"] for e in metrics] == list(range(1, 7))  # type: ignore[index]
    assert metrics[-1].data["train_loss"] == pytest.approx(1 / 6)  # type: ignore[index]
    native_events = client.get(f"/v1/jobs/{job.id}/events", headers=tenant.headers).json()["data"]
    assert len(events) == len(native_events)

    done = oai.fine_tuning.jobs.retrieve(job.id)
    assert_parsed(done)
    assert done.status == "succeeded" and done.fine_tuned_model == f"job:{job.id}"
    assert isinstance(done.finished_at, int) and done.finished_at >= done.created_at

    checkpoints = list(oai.fine_tuning.jobs.checkpoints.list(job.id))
    assert len(checkpoints) == 1
    checkpoint = checkpoints[0]
    assert isinstance(checkpoint, FineTuningJobCheckpoint)
    assert_parsed(checkpoint)
    assert checkpoint.step_number == 6 and checkpoint.fine_tuning_job_id == job.id
    assert checkpoint.metrics.train_loss == pytest.approx(1 / 6)
    # The model downloads through alignd's own checkpoint endpoint.
    assert checkpoint.fine_tuned_model_checkpoint == f"checkpoint:{checkpoint.id}"
    download = httpx.get(f"{live}/v1/checkpoints/{checkpoint.id}/download", headers=tenant.headers)
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == download.headers["X-Checkpoint-SHA256"]

    # The fine-tuned model is a model reference for the next job.
    sft = upload(oai, "gsm8k-chat.jsonl", real_rows("gsm8k-openai-chat-sft.jsonl", 4))
    follow_up = oai.fine_tuning.jobs.create(model=done.fine_tuned_model, training_file=sft.id)
    assert follow_up.model == f"job:{job.id}" and follow_up.method is not None
    assert follow_up.method.type == "supervised"


def test_an_sft_job_with_legacy_hyperparameters_runs_and_its_events_page_newest_first(oai: openai.OpenAI, work) -> None:
    file = upload(oai, "gsm8k-chat.jsonl", real_rows("gsm8k-openai-chat-sft.jsonl", 6))
    job = oai.fine_tuning.jobs.create(
        model=HUB_MODEL, training_file=file.id, validation_file=file.id, hyperparameters={"n_epochs": 3}
    )
    assert_parsed(job)
    assert job.method is not None and job.method.type == "supervised" and job.method.supervised is not None
    assert job.method.supervised.hyperparameters is not None
    assert job.method.supervised.hyperparameters.n_epochs == 3 == job.hyperparameters.n_epochs
    assert job.hyperparameters.batch_size == 8 and job.hyperparameters.learning_rate_multiplier == 1.0
    assert job.validation_file == file.id

    work(job.id).join(60)
    page = oai.fine_tuning.jobs.list_events(job.id, limit=3)
    assert len(page.data) == 3 and page.has_more
    assert page.data[0].message == "The job has successfully completed"
    everything = list(oai.fine_tuning.jobs.list_events(job.id, limit=3))  # the SDK pages with after=<last id>
    created = [e.created_at for e in everything]
    assert created == sorted(created, reverse=True)
    assert len({e.id for e in everything}) == len(everything) > 6


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_jobs_page_newest_first_filter_by_metadata_cancel_pause_and_resume(oai: openai.OpenAI) -> None:
    file = upload(oai, "gsm8k-chat.jsonl", real_rows("gsm8k-openai-chat-sft.jsonl", 4))
    jobs = [
        oai.fine_tuning.jobs.create(model=HUB_MODEL, training_file=file.id, metadata={"run": str(i)}) for i in range(3)
    ]
    first_page = oai.fine_tuning.jobs.list(limit=2)
    assert [j.id for j in first_page.data] == [jobs[2].id, jobs[1].id] and first_page.has_more
    assert [j.id for j in oai.fine_tuning.jobs.list(limit=2)] == [j.id for j in reversed(jobs)]  # auto-paging
    assert [j.id for j in oai.fine_tuning.jobs.list(metadata={"run": "1"})] == [jobs[1].id]
    for listed in first_page.data:
        assert isinstance(listed, FineTuningJob)
        assert_parsed(listed)

    cancelled = oai.fine_tuning.jobs.cancel(jobs[0].id)
    assert_parsed(cancelled)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert oai.fine_tuning.jobs.cancel(jobs[0].id).status == "cancelled"  # idempotent

    paused = oai.fine_tuning.jobs.pause(jobs[1].id)  # queued: paused at once
    # "paused" is OpenAI's status of a paused job, though the SDK's status Literal lacks it: the SDK does
    # not validate responses, so it reads as the string; a strict model_validate would refuse it.
    assert isinstance(paused, FineTuningJob) and not paused.model_extra
    assert paused.status == "paused" and oai.fine_tuning.jobs.pause(jobs[1].id).status == "paused"
    resumed = oai.fine_tuning.jobs.resume(jobs[1].id)
    assert_parsed(resumed)
    assert resumed.status == "queued" and oai.fine_tuning.jobs.resume(jobs[1].id).status == "queued"
    messages = [e.message for e in oai.fine_tuning.jobs.list_events(jobs[1].id)]
    assert messages[:3] == ["Job resumed", "Job paused", "Job queued"]
    with pytest.raises(openai.ConflictError) as not_pausable:
        oai.fine_tuning.jobs.pause(jobs[0].id)
    assert "cancelled" in not_pausable.value.message
    assert not_pausable.value.code == "job_not_pausable" and not_pausable.value.type == "invalid_request_error"
    with pytest.raises(openai.ConflictError, match="only paused jobs can be resumed"):
        oai.fine_tuning.jobs.resume(jobs[0].id)
    with pytest.raises(openai.NotFoundError):
        oai.fine_tuning.jobs.retrieve("job_does_not_exist")


def test_a_reinforcement_job_maps_string_check_and_multi_graders_onto_reward_rules(
    oai: openai.OpenAI, work, client, tenant: TenantKey
) -> None:
    file = upload(oai, "gsm8k-rft.jsonl", rft_rows(6))
    native_file = client.get(f"/v1/datasets/{file.id}", headers=tenant.headers).json()
    assert (native_file["kind"], native_file["format"], native_file["rows"]) == ("prompt", "openai_rft", 6)

    grader = {
        "type": "string_check",
        "name": "correct answer",
        "input": "{{ sample.output_text }}",
        "reference": "{{item.answer}}",
        "operation": "eq",
    }
    with pytest.raises(openai.BadRequestError, match="eval_interval"):  # grpo does not evaluate during training yet
        oai.fine_tuning.jobs.create(
            model=HUB_MODEL,
            training_file=file.id,
            method={
                "type": "reinforcement",
                "reinforcement": {"grader": grader, "hyperparameters": {"batch_size": 2, "eval_interval": 5}},
            },
        )
    job = oai.fine_tuning.jobs.create(
        model=HUB_MODEL,
        training_file=file.id,
        method={"type": "reinforcement", "reinforcement": {"grader": grader, "hyperparameters": {"batch_size": 2}}},
    )
    assert_parsed(job)
    assert job.method is not None and job.method.type == "reinforcement" and job.method.reinforcement is not None
    shown = job.method.reinforcement.grader
    assert isinstance(shown, StringCheckGrader)
    assert (shown.name, shown.operation, shown.reference, shown.input) == (
        "correct_answer",
        "eq",
        "{{item.answer}}",
        "{{sample.output_text}}",
    )
    assert job.method.reinforcement.hyperparameters is not None
    assert job.method.reinforcement.hyperparameters.eval_interval == "auto"
    native = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json()
    assert native["algorithm"] == "grpo"
    assert native["reward"] == [
        {
            "type": "rule",
            "rule": "string_check",
            "name": "correct_answer",
            "weight": 1.0,
            "column": "answer",
            "operation": "eq",
            "length_mode": "target",
        }
    ]
    assert "eval_every" not in native["hyperparameters"] and native["hyperparameters"]["batch_size"] == 2
    work(job.id).join(60)
    assert oai.fine_tuning.jobs.retrieve(job.id).status == "succeeded"

    multi = oai.fine_tuning.jobs.create(
        model=HUB_MODEL,
        training_file=file.id,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {
                    "type": "multi",
                    "name": "score",
                    "graders": {
                        "correct": {**grader, "name": "correct"},
                        "tagged": {
                            "type": "string_check",
                            "name": "tagged",
                            "input": "{{sample.output_text}}",
                            "reference": "####",
                            "operation": "like",
                        },
                    },
                    "calculate_output": "(3 * correct + tagged) / 4",
                }
            },
        },
    )
    native = client.get(f"/v1/jobs/{multi.id}", headers=tenant.headers).json()
    assert [(c["name"], c["weight"], c.get("column"), c.get("reference")) for c in native["reward"]] == [
        ("correct", 0.75, "answer", None),
        ("tagged", 0.25, "answer", "####"),
    ]
    # Several graders come back as OpenAI documents them, a map of name -> grader; openai 3.57 types
    # MultiGrader.graders as one grader, so this one is read as a dict (api/README.md says so).
    shown_multi = client.get(f"/v1/fine_tuning/jobs/{multi.id}", headers=tenant.headers).json()["method"]
    shown_multi = shown_multi["reinforcement"]["grader"]
    assert shown_multi["type"] == "multi" and shown_multi["calculate_output"] == "0.75 * correct + 0.25 * tagged"
    assert shown_multi["graders"]["tagged"] == {
        "type": "string_check",
        "name": "tagged",
        "input": "{{sample.output_text}}",
        "reference": "####",
        "operation": "like",
    }

    # The SDK's own form of a multi grader (`graders` is one grader) parses back as its typed models.
    weighted = oai.fine_tuning.jobs.create(
        model=HUB_MODEL,
        training_file=file.id,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {"type": "multi", "name": "x2", "graders": {**grader, "name": "c"}, "calculate_output": "2*c"}
            },
        },
    )
    assert_parsed(weighted)
    assert weighted.method is not None and weighted.method.reinforcement is not None
    view = weighted.method.reinforcement.grader
    assert isinstance(view, MultiGrader) and isinstance(view.graders, StringCheckGrader)
    assert view.calculate_output == "2 * c" and view.graders.name == "c"


def test_a_text_similarity_grader_with_fuzzy_match_becomes_the_fuzzy_match_rule_and_trains(
    oai: openai.OpenAI, work, client, tenant: TenantKey
) -> None:
    file = upload(oai, "gsm8k-rft.jsonl", rft_rows(6))
    grader = {
        "type": "text_similarity",
        "name": "close",
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "evaluation_metric": "fuzzy_match",
    }
    job = oai.fine_tuning.jobs.create(
        model=HUB_MODEL,
        training_file=file.id,
        method={"type": "reinforcement", "reinforcement": {"grader": grader}},
    )
    assert_parsed(job)
    assert job.method is not None and job.method.reinforcement is not None
    shown = job.method.reinforcement.grader
    assert isinstance(shown, TextSimilarityGrader) and shown.evaluation_metric == "fuzzy_match"
    native = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json()
    assert native["reward"] == [
        {
            "type": "rule",
            "rule": "fuzzy_match",
            "name": "close",
            "weight": 1.0,
            "column": "answer",
            "length_mode": "target",
        }
    ]
    work(job.id).join(60)
    assert oai.fine_tuning.jobs.retrieve(job.id).status == "succeeded"
    with pytest.raises(openai.BadRequestError, match="pass_threshold"):
        oai.fine_tuning.jobs.create(
            model=HUB_MODEL,
            training_file=file.id,
            method={"type": "reinforcement", "reinforcement": {"grader": {**grader, "pass_threshold": 0.5}}},
        )


@pytest.mark.parametrize(
    ("grader", "named"),
    [
        ({"type": "python", "name": "mine", "source": "def grade(s, i): return 1"}, "python grader 'mine'"),
        (
            {
                "type": "text_similarity",
                "name": "sim",
                "input": "{{sample.output_text}}",
                "reference": "x",
                "evaluation_metric": "bleu",
            },
            "text_similarity grader 'sim' (evaluation_metric 'bleu')",
        ),
        (
            {
                "type": "label_model",
                "name": "judge",
                "model": "gpt-4o",
                "input": [],
                "labels": ["a"],
                "passing_labels": ["a"],
            },
            "label_model grader 'judge'",
        ),
        (
            {"type": "string_check", "name": "echo", "input": "{{item.answer}}", "reference": "x", "operation": "eq"},
            "input '{{item.answer}}' cannot be honoured",
        ),
        (
            {
                "type": "multi",
                "name": "m",
                "calculate_output": "max(a, b)",
                "graders": {
                    "a": {
                        "type": "string_check",
                        "name": "a",
                        "input": "{{sample.output_text}}",
                        "reference": "x",
                        "operation": "eq",
                    },
                    "b": {
                        "type": "string_check",
                        "name": "b",
                        "input": "{{sample.output_text}}",
                        "reference": "y",
                        "operation": "eq",
                    },
                },
            },
            "calculate_output 'max(a, b)' cannot be honoured",
        ),
        (
            {"type": "score_model", "name": "judge", "model": "gpt-4o-2024-08-06", "input": []},
            "gpt-4o-2024-08-06",
        ),
    ],
)
def test_graders_alignd_cannot_honour_are_refused_by_name(
    oai: openai.OpenAI, grader: dict[str, Any], named: str
) -> None:
    file = upload(oai, "gsm8k-rft.jsonl", rft_rows(2))
    method: Any = {"type": "reinforcement", "reinforcement": {"grader": grader}}
    with pytest.raises(openai.BadRequestError) as refused:
        oai.fine_tuning.jobs.create(model=HUB_MODEL, training_file=file.id, method=method)
    assert named in refused.value.message
    assert refused.value.type == "invalid_request_error"
    assert refused.value.param is not None and refused.value.param.startswith("method.reinforcement.grader")
    assert oai.fine_tuning.jobs.list().data == []


def test_score_model_with_a_model_alignd_can_load_becomes_a_model_component(
    oai: openai.OpenAI, client, tenant: TenantKey
) -> None:
    file = upload(oai, "gsm8k-rft.jsonl", rft_rows(2))
    job = oai.fine_tuning.jobs.create(
        model=HUB_MODEL,
        training_file=file.id,
        method={
            "type": "reinforcement",
            "reinforcement": {
                "grader": {"type": "score_model", "name": "rm", "model": "org/reward-model", "input": []}
            },
        },
    )
    assert job.method is not None and job.method.reinforcement is not None
    assert isinstance(job.method.reinforcement.grader, ScoreModelGrader)
    assert job.method.reinforcement.grader.model == "org/reward-model"
    native = client.get(f"/v1/jobs/{job.id}", headers=tenant.headers).json()
    assert native["reward"] == [{"type": "model", "model": "org/reward-model", "name": "rm", "weight": 1.0}]


def test_requests_alignd_cannot_honour_are_openai_errors_naming_the_parameter(
    oai: openai.OpenAI, live: str, tenant: TenantKey
) -> None:
    with pytest.raises(openai.BadRequestError) as purpose:
        oai.files.create(file=("a.jsonl", io.BytesIO(real_rows("gsm8k-train.jsonl", 1))), purpose="assistants")
    assert purpose.value.param == "purpose" and "'assistants' is not supported" in purpose.value.message

    with pytest.raises(openai.BadRequestError) as bad_rows:
        oai.files.create(file=("a.jsonl", io.BytesIO(b'{"nothing": 1}\n')), purpose="fine-tune")
    assert bad_rows.value.code == "invalid_dataset" and bad_rows.value.param == "file"

    sft = upload(oai, "gsm8k-chat.jsonl", real_rows("gsm8k-openai-chat-sft.jsonl", 2))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"training_file": "ds_nope"}, "training_file"),
        ({"method": {"type": "dpo"}}, "training_file"),  # an SFT file given to DPO
        ({"model": "gpt-4o-mini-2024-07-18"}, "model"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"learning_rate_multiplier": 1e6}}}},
            "method.supervised.hyperparameters.learning_rate_multiplier",
        ),
        ({"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ]
    for extra, param in cases:
        body = {"model": HUB_MODEL, "training_file": sft.id, **extra}
        with pytest.raises(openai.BadRequestError) as refused:
            oai.fine_tuning.jobs.create(**body)
        assert refused.value.param == param, (extra, refused.value.body)
        assert refused.value.type == "invalid_request_error"

    with pytest.raises(openai.BadRequestError) as unknown:
        oai.fine_tuning.jobs.create(model=HUB_MODEL, training_file=sft.id, extra_body={"learning_rate": 1})
    assert unknown.value.param == "learning_rate"
    raw = httpx.post(f"{live}/v1/fine_tuning/jobs", json={}, headers=tenant.headers)
    assert raw.status_code == 400 and set(raw.json()["error"]) >= {"message", "type", "param", "code"}

    with (
        openai.OpenAI(base_url=f"{live}/v1", api_key="wrong", max_retries=0) as stranger,
        pytest.raises(openai.AuthenticationError),
    ):
        stranger.fine_tuning.jobs.list()


def test_files_list_retrieve_download_and_delete(oai: openai.OpenAI, live: str, tenant: TenantKey) -> None:
    content = real_rows("orca-dpo-pairs.openai-dpo.jsonl", 3)
    first = upload(oai, "a.jsonl", content)
    second = upload(oai, "b.jsonl", real_rows("gsm8k-openai-chat-sft.jsonl", 2))
    listed = list(oai.files.list(limit=1))
    assert [f.id for f in listed] == [second.id, first.id]
    for file in listed:
        assert isinstance(file, FileObject)
        assert_parsed(file)
    assert oai.files.list(purpose="batch").data == []
    assert oai.files.content(first.id).content == content
    deleted = oai.files.delete(first.id)
    assert isinstance(deleted, FileDeleted)
    assert_parsed(deleted)
    assert deleted.deleted and deleted.id == first.id
    with pytest.raises(openai.NotFoundError):
        oai.files.retrieve(first.id)


def test_calculate_output_is_read_as_a_weighted_sum_of_grader_names() -> None:
    from api.openai_compat.graders import GraderRefused, _weighted_sum

    names = {"a", "b", "c"}
    assert _weighted_sum("0.5 * a + b / 2 - c", names, "p") == {"a": 0.5, "b": 0.5, "c": -1.0}
    assert _weighted_sum("-(a - 2 * b) * 0.5", names, "p") == {"a": -0.5, "b": 1.0}
    assert _weighted_sum("a + a", names, "p") == {"a": 2.0}
    for refused in ("a * b", "a + 1", "min(a, b)", "a / b", "d", "a - a", "a ** 2", "a +"):
        with pytest.raises(GraderRefused):
            _weighted_sum(refused, names, "p")


def test_native_jobs_show_through_the_openai_view_unless_their_algorithm_has_no_openai_method(
    oai: openai.OpenAI, client, tenant: TenantKey
) -> None:
    file = upload(oai, "orca.jsonl", real_rows("orca-dpo-pairs.openai-dpo.jsonl", 4))
    native = {"base_model": HUB_MODEL, "dataset_id": file.id}
    dpo = client.post("/v1/jobs", headers=tenant.headers, json={**native, "algorithm": "dpo", "name": "native"})
    reward = client.post("/v1/jobs", headers=tenant.headers, json={**native, "algorithm": "reward"})
    assert dpo.status_code == reward.status_code == 201, (dpo.text, reward.text)

    shown = oai.fine_tuning.jobs.retrieve(dpo.json()["id"])
    assert_parsed(shown)
    assert (
        shown.method is not None and shown.method.type == "dpo" and shown.hyperparameters.learning_rate_multiplier == 1
    )
    with pytest.raises(openai.NotFoundError, match="reward job, which has no OpenAI fine-tuning method"):
        oai.fine_tuning.jobs.retrieve(reward.json()["id"])
    assert [j.id for j in oai.fine_tuning.jobs.list()] == [dpo.json()["id"]]
    prompts = upload(oai, "gsm8k-rft.jsonl", rft_rows(2))
    grpo = client.post(
        "/v1/jobs",
        headers=tenant.headers,
        json={
            "algorithm": "grpo",
            "base_model": HUB_MODEL,
            "dataset_id": prompts.id,
            "reward": [{"type": "rule", "rule": "exact_match"}],
        },
    )
    assert grpo.status_code == 201, grpo.text
    rl = oai.fine_tuning.jobs.retrieve(grpo.json()["id"])
    assert_parsed(rl)
    assert rl.method is not None and rl.method.reinforcement is not None
    rule = rl.method.reinforcement.grader
    assert isinstance(rule, PythonGrader) and rule.source.startswith("# alignd rule") and "exact_match" in rule.source
