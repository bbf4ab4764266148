"""POST /v1/plan with dataset_id: plans at the token lengths of the tenant's dataset (api/plan/lengths.py).

The model is Qwen2-0.5B's config.json beside tests/tiny.py's byte-level tokenizer (one token per byte of a
plain-text row), so the lengths of the rows are known by hand. The rows are tokenised in the forked child
that scoring and the preview use; the first request of a test process starts its forkserver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace as dataclass_replace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.core.settings import Settings
from api.core.storage import storage_from_url
from api.datasets.models import Dataset, DatasetTokenLengths
from api.datasets.service import index_key
from api.plan import lengths
from api.plan.estimate import PlanInput, shape_from_config
from api.plan.lengths import DatasetLengths, Percentiles, at_data_lengths, sample_offsets
from tests.api.helpers import assert_error, upload_ok
from tests.api.test_plan import QWEN_05B
from tests.tiny import build_tiny_tokenizer

MODEL = "qwen-tok"


@pytest.fixture
def model(settings: Settings) -> str:
    folder = settings.resolved_models_dir / MODEL
    build_tiny_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(QWEN_05B))
    return MODEL


def pairs(prompt_lengths: list[int], completion: int) -> bytes:
    rejected = "r" * (completion // 2)
    rows = [{"prompt": "p" * n, "chosen": "c" * completion, "rejected": rejected} for n in prompt_lengths]
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def prompts(prompt_lengths: list[int]) -> bytes:
    return b"".join(json.dumps({"prompt": "q" * n}).encode() + b"\n" for n in prompt_lengths)


def plan(client: TestClient, auth: dict[str, str], **fields: Any) -> Any:
    body = {"base_model": MODEL, "algorithms": ["dpo", "grpo"], "hardware": {"kind": "gpu", "gpu": "H100"}, **fields}
    return client.post("/v1/plan", headers=auth, json=body)


def peaks(answer: dict[str, Any]) -> dict[str, int]:
    return {p["algorithm"]: p["memory"]["peak_bytes"] for p in answer["plans"]}


def test_a_dataset_of_short_rows_plans_less_memory_than_the_caps_and_reports_its_percentiles(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    dataset = upload_ok(client, auth, pairs(list(range(10, 110)), 40))["id"]
    # Checkpointing pinned: under "auto" (the offline default) shorter rows may plan MORE memory, because the
    # trainer then skips checkpointing them (tested below); here only the lengths may differ.
    at_caps = plan(client, auth, gradient_checkpointing=True)
    assert at_caps.status_code == 200, at_caps.text
    assert at_caps.json()["dataset"] is None
    resp = plan(client, auth, dataset_id=dataset, gradient_checkpointing=True)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    measured = answer["dataset"]
    assert (measured["id"], measured["rows"], measured["rows_measured"], measured["rows_unreadable"]) == (
        dataset,
        100,
        100,
        0,
    )
    assert measured["sampled"] is False and measured["cached"] is False
    # one token per byte: prompts of 10..109 tokens, completions the chosen's 40 (longer than the rejected's)
    assert measured["prompt_tokens"] == {"p50": 59, "p90": 99, "p99": 108, "max": 109}
    completion = measured["completion_tokens"]["max"]
    assert measured["completion_tokens"]["p50"] == completion >= 40
    assert measured["sequence_tokens"]["max"] == 109 + completion
    planned = {p["algorithm"]: p for p in measured["planned"]}
    assert planned["dpo"] == {
        "algorithm": "dpo",
        "sequence_tokens": 109 + completion,
        "prompt_tokens": 109,
        "completion_tokens": completion,
    }
    assert planned["grpo"]["prompt_tokens"] == 109 and planned["grpo"]["completion_tokens"] == 128
    for algorithm, peak in peaks(answer).items():
        assert peak < peaks(at_caps.json())[algorithm], algorithm


def test_a_dataset_of_long_rows_plans_at_the_caps(client: TestClient, auth: dict[str, str], model: str) -> None:
    dataset = upload_ok(client, auth, pairs([600, 700], 700))["id"]
    answer = plan(client, auth, dataset_id=dataset).json()
    assert answer["dataset"]["prompt_tokens"]["max"] == 700
    planned = {p["algorithm"]: p for p in answer["dataset"]["planned"]}
    # the prompt is cut to max_prompt_length (512), the completion to what is left of max_length (1024)
    assert (planned["dpo"]["sequence_tokens"], planned["dpo"]["completion_tokens"]) == (1024, 512)
    assert planned["grpo"]["prompt_tokens"] == 512
    assert peaks(answer) == peaks(plan(client, auth).json())


def test_prompt_only_data_sizes_grpo_and_leaves_offline_algorithms_at_the_caps(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    dataset = upload_ok(client, auth, prompts([5, 50, 200]))["id"]
    answer = plan(client, auth, dataset_id=dataset).json()
    assert answer["dataset"]["completion_tokens"] is None
    assert answer["dataset"]["prompt_tokens"]["max"] == 200
    at_caps = peaks(plan(client, auth).json())
    assert peaks(answer)["dpo"] == at_caps["dpo"]
    assert peaks(answer)["grpo"] < at_caps["grpo"]


def test_the_lengths_are_measured_once_per_dataset_and_model(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    dataset = upload_ok(client, auth, pairs([10, 20], 40))["id"]
    first = plan(client, auth, dataset_id=dataset).json()
    second = plan(client, auth, dataset_id=dataset, algorithms=["sft"]).json()
    assert (first["dataset"]["cached"], second["dataset"]["cached"]) == (False, True)
    assert first["dataset"]["prompt_tokens"] == second["dataset"]["prompt_tokens"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_the_lengths_are_stored_in_the_database_once_even_when_two_requests_measure_them(
    client: TestClient, auth: dict[str, str], model: str, session: Session
) -> None:
    dataset = upload_ok(client, auth, pairs([10, 20], 40))["id"]
    first = plan(client, auth, dataset_id=dataset).json()["dataset"]
    stored = session.scalars(select(DatasetTokenLengths)).all()
    assert [(row.dataset_id, row.model, row.raw) for row in stored] == [
        (dataset, MODEL, [[10, 41], [20, 41]])
    ]  # completion: + its EOS
    found = lengths.cached(session, dataset, f" {MODEL} ")  # the reference as given, stripped
    assert found is not None and found.cached and found.raw == ((10, 41), (20, 41))
    assert (found.rows, found.rows_measured, found.rows_unreadable, found.sampled) == (2, 2, 0, False)
    assert found.prompt_tokens == Percentiles(**first["prompt_tokens"])
    assert found.completion_tokens == Percentiles(**first["completion_tokens"])
    assert found.sequence_tokens == Percentiles(**first["sequence_tokens"])
    session.rollback()
    # a second process that measured the same dataset meanwhile: its insert is a no-op, not an error
    lengths._store(session, dataclass_replace(found, rows_unreadable=7, cached=False))
    again = lengths.cached(session, dataset, MODEL)
    assert again is not None and again.rows_unreadable == 0


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_deleting_a_dataset_deletes_its_lengths(
    client: TestClient, auth: dict[str, str], model: str, session: Session
) -> None:
    kept, deleted, purged = (upload_ok(client, auth, pairs([10 + i], 40))["id"] for i in range(3))
    for dataset in (kept, deleted, purged):
        assert plan(client, auth, dataset_id=dataset).status_code == 200
    assert client.delete(f"/v1/datasets/{deleted}", headers=auth).status_code == 204
    session.execute(delete(Dataset).where(Dataset.id == purged))  # the row itself (its tenant deleted): CASCADE
    session.commit()
    assert session.scalars(select(DatasetTokenLengths.dataset_id)).all() == [kept]
    # a plan that measured the dataset while it was being deleted stores nothing
    late = DatasetLengths(deleted, MODEL, 1, 1, 0, False, None, None, None, raw=((11, 41),))
    lengths._store(session, late)
    assert session.scalars(select(DatasetTokenLengths.dataset_id)).all() == [kept]


def test_another_tenants_dataset_is_a_404_like_an_unknown_one(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], model: str
) -> None:
    theirs = upload_ok(client, other_auth, pairs([10], 40))["id"]
    assert plan(client, other_auth, dataset_id=theirs).status_code == 200
    assert_error(plan(client, auth, dataset_id=theirs), 404, "not_found")
    assert_error(plan(client, auth, dataset_id="ds_nope"), 404, "not_found")


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"dataset_id": "d" * 65}, "dataset_id"),
        ({"dataset_id": ""}, "dataset_id"),
        ({"dataset_id": 7}, "dataset_id"),
        ({"dataset_id": "ds_\u0000"}, "dataset_id"),
        ({"dataset": "ds_x"}, "dataset"),
        ({"batch_size": 10**9}, "batch_size"),
    ],
)
def test_a_malformed_or_huge_request_is_a_422(
    client: TestClient, auth: dict[str, str], model: str, fields: dict[str, Any], param: str
) -> None:
    resp = plan(client, auth, **fields)
    assert_error(resp, 422, "invalid_request")
    assert resp.json()["error"]["param"] == param


def test_a_model_whose_tokenizer_cannot_load_is_a_422_not_a_500(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    folder = settings.resolved_models_dir / "broken-tokenizer"
    build_tiny_tokenizer(folder)
    (folder / "config.json").write_text(json.dumps(QWEN_05B))
    (folder / "tokenizer.json").write_text("{not json")
    dataset = upload_ok(client, auth, pairs([10], 40))["id"]
    resp = plan(client, auth, base_model="broken-tokenizer", dataset_id=dataset)
    assert_error(resp, 422, param="base_model")
    assert "tokenizer" in resp.json()["error"]["message"]


def test_a_dataset_whose_file_is_gone_is_a_422_not_a_500(
    client: TestClient, auth: dict[str, str], model: str, settings: Settings, session: Session
) -> None:
    dataset = upload_ok(client, auth, pairs([10], 40))["id"]
    stored = session.get(Dataset, dataset)
    assert stored is not None
    storage = storage_from_url(settings.resolved_storage_url)
    storage.delete(stored.storage_key)
    storage.delete(index_key(stored.storage_key))
    assert_error(plan(client, auth, dataset_id=dataset), 422, "dataset_unreadable", "dataset_id")


# --- without the API ------------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_lengths_some_row_has() -> None:
    assert Percentiles.of(list(range(1, 101))) == Percentiles(50, 90, 99, 100)
    assert Percentiles.of([7]) == Percentiles(7, 7, 7, 7)
    assert Percentiles.of([3, 1, 2]) == Percentiles(2, 3, 3, 3)


def test_a_large_dataset_is_sampled_with_a_fixed_seed_and_a_bound() -> None:
    assert sample_offsets(5) == [0, 1, 2, 3, 4]
    sample = sample_offsets(1_000_000)
    assert len(sample) == lengths.SAMPLE_ROWS == len(set(sample)) and sample == sorted(sample)
    assert sample == sample_offsets(1_000_000)


def test_the_planned_lengths_follow_the_trainers_truncation() -> None:
    x = PlanInput(shape=shape_from_config(QWEN_05B), max_length=100, max_prompt_length=60)
    measured = DatasetLengths("ds", "m", 3, 3, 0, False, None, Percentiles(1, 1, 1, 1), None, raw=((80, 10), (5, 70)))
    offline = at_data_lengths("dpo", x, measured)
    # row 1: prompt cut to 60, completion 10 -> 70; row 2: 5 + 70 -> 75; longest completion kept: 70
    assert (offline.max_length, offline.max_length - offline.max_prompt_length) == (75, 70)
    assert at_data_lengths("grpo", x, measured).max_prompt_length == 60
    assert at_data_lengths("dpo", x, None) is x


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_job_creation_plans_at_the_lengths_a_plan_measured_in_another_api_process(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    model: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from api.core import reset_caches
    from api.plan.estimate import GIB, Hardware, estimate_plan, job_plan_input
    from trainer.config import parse_hyperparameters

    dataset = upload_ok(client, auth, pairs([10, 20], 40))["id"]
    hyperparameters = {"max_length": 8192, "max_prompt_length": 4096, "batch_size": 16, "gradient_checkpointing": False}
    job = {"algorithm": "dpo", "base_model": MODEL, "dataset_id": dataset, "hyperparameters": hyperparameters}
    # a worker GPU between the job's peak at this data's lengths and its peak at the caps
    x = job_plan_input(
        shape_from_config(QWEN_05B), parse_hyperparameters("dpo", hyperparameters).model_dump(), None, []
    )
    worker = Hardware.gpu("H100", precision="bf16")
    at_caps = estimate_plan("dpo", x, worker)["memory"]["peak_bytes"]
    short = DatasetLengths(dataset, MODEL, 2, 2, 0, False, None, Percentiles(41, 41, 41, 41), None, raw=((20, 41),))
    at_data = estimate_plan("dpo", at_data_lengths("dpo", x, short), worker)["memory"]["peak_bytes"]
    assert at_data < at_caps / 2
    monkeypatch.setenv("ALIGND_WORKER_GPU_MEMORY_GB", f"{(at_data + at_caps) / 2 / GIB:.1f}")
    reset_caches()
    assert_error(client.post("/v1/jobs", headers=auth, json=job), 422, "job_does_not_fit")  # nothing measured yet
    # the plan is answered by another API process on the same database (`alignd serve --processes N`, or
    # before a restart): what it measured is what this process plans the job at
    measured = plan_in_another_process(auth, dataset)["dataset"]
    assert measured["prompt_tokens"]["max"] == 20 and measured["completion_tokens"]["max"] <= 41
    assert measured["cached"] is False
    assert client.post("/v1/jobs", headers=auth, json=job).status_code == 201
    # another tenant's dataset id gives its lengths to nobody: the job is refused as for an unknown dataset
    theirs = upload_ok(client, other_auth, pairs([10, 20], 40))["id"]
    assert plan(client, other_auth, dataset_id=theirs).status_code == 200
    assert_error(
        client.post("/v1/jobs", headers=auth, json={**job, "dataset_id": theirs}), 422, "invalid_request", "dataset_id"
    )


def plan_in_another_process(auth: dict[str, str], dataset: str) -> Any:
    """POST /v1/plan through an app of its own in a fresh Python process (this test's settings: its env)."""
    script = (
        "import json, sys\n"
        "from fastapi.testclient import TestClient\n"
        "from api.main import create_app\n"
        "with TestClient(create_app()) as c:\n"
        "    r = c.post('/v1/plan', headers=json.loads(sys.argv[1]), json=json.loads(sys.argv[2]))\n"
        "    print(json.dumps({'status': r.status_code, 'body': r.json()}))\n"
    )
    body = {"base_model": MODEL, "algorithms": ["dpo"], "hardware": {"kind": "gpu", "gpu": "H100"}}
    done = subprocess.run(
        [sys.executable, "-c", script, json.dumps(auth), json.dumps({**body, "dataset_id": dataset})],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["status"] == 200, answer
    return answer["body"]


def test_under_auto_checkpointing_short_rows_plan_the_unrecomputed_step_the_trainer_will_run(
    client: TestClient, auth: dict[str, str], model: str
) -> None:
    dataset = upload_ok(client, auth, pairs(list(range(10, 110)), 40))["id"]
    measured = plan(client, auth, dataset_id=dataset, algorithms=["dpo"]).json()["plans"][0]
    at_caps = plan(client, auth, algorithms=["dpo"]).json()["plans"][0]
    assert measured["gradient_checkpointing"] is False  # 149-token pairs: their activations fit, none recomputed
    pinned = plan(client, auth, dataset_id=dataset, algorithms=["dpo"], gradient_checkpointing=False).json()
    assert measured["memory"]["peak_bytes"] == pinned["plans"][0]["memory"]["peak_bytes"]
    assert at_caps["memory"]["peak_bytes"] != measured["memory"]["peak_bytes"]
