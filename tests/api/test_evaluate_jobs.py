"""Evaluate jobs: what is checked before 201 (dataset kind vs reward, every model ref of the tenant,
the number of models, hyperparameters), and how their results show on the job."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.jobs.models import Job
from tests.api.helpers import MODEL, assert_error
from trainer.config import EvaluateConfig

RULE = [{"type": "rule", "rule": "contains", "column": "answer"}]


def evaluate(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"algorithm": "evaluate", "base_model": MODEL, "dataset_id": dataset_id, **extra}


def job_count(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job)) or 0


def finished_job_with_checkpoint(session: Session, tenant_id: str, dataset_id: str) -> tuple[str, str]:
    """(job id, checkpoint id) of a succeeded job of `tenant_id`, as the relay leaves one."""
    job = Job(
        tenant_id=tenant_id,
        algorithm="dpo",
        status="succeeded",
        base_model=MODEL,
        dataset_id=dataset_id,
        hyperparameters={},
        attempt=1,
        last_event_seq=0,
    )
    session.add(job)
    session.flush()
    checkpoint = Checkpoint(
        tenant_id=tenant_id, job_id=job.id, step=3, kind="final", bytes=1, sha256="0" * 64, storage_key="k.tar"
    )
    session.add(checkpoint)
    session.flush()
    job.output_checkpoint_id = checkpoint.id
    session.commit()
    return job.id, checkpoint.id


def test_an_evaluate_job_on_pairs_with_candidates_is_queued_with_its_defaults_and_no_checkpoint(
    client: TestClient, auth: dict[str, str], tenant: Any, session: Session, model: str, pairs: str
) -> None:
    job_id, checkpoint_id = finished_job_with_checkpoint(session, tenant.id, pairs)
    body = evaluate(pairs, models=[f"job:{job_id}", f"checkpoint:{checkpoint_id}"], hyperparameters={"beta": 0.2})
    resp = client.post("/v1/jobs", headers=auth, json=body)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["algorithm"] == "evaluate" and job["status"] == "queued"
    assert job["models"] == [f"job:{job_id}", f"checkpoint:{checkpoint_id}"]
    assert job["hyperparameters"] == EvaluateConfig(beta=0.2).model_dump(mode="json")
    assert job["results"] is None and job["output_checkpoint_id"] is None and job["lora"] is None
    listed = client.get("/v1/jobs", headers=auth, params={"algorithm": "evaluate"}).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_an_evaluate_job_on_prompts_needs_a_reward_and_on_pairs_refuses_one(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, prompts: str
) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(prompts)), 422, param="reward")
    assert "evaluate on a prompt dataset needs a reward" in error["message"]
    error = assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(pairs, reward=RULE)), 422, param="reward")
    assert "evaluating preference pairs needs no reward" in error["message"]
    assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(pairs, reward_model_id="rm_x")), 422)
    assert job_count(session) == 0
    created = client.post("/v1/jobs", headers=auth, json=evaluate(prompts, reward=RULE))
    assert created.status_code == 201, created.text
    assert created.json()["reward"] == [
        {"type": "rule", "rule": "contains", "column": "answer", "weight": 1.0, "length_mode": "target"}
    ]


def test_an_sft_dataset_cannot_be_evaluated(
    client: TestClient, auth: dict[str, str], session: Session, model: str
) -> None:
    from tests.api.helpers import upload_ok

    sft = upload_ok(client, auth, b'{"prompt": "a", "completion": "b"}\n', "sft.jsonl")["id"]
    error = assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(sft)), 422, param="dataset_id")
    assert "given to evaluate, which needs preference pairs or prompts" in error["message"]
    assert job_count(session) == 0


@pytest.mark.parametrize(
    ("models", "param", "message"),
    [
        (["no-such-model"], "models[0]", "unknown model"),
        ([MODEL], "models[0]", "already evaluated as base_model"),
        (["job:job_nope"], "models[0]", "no job"),
        (["/etc/passwd"], "models[0]", "file path"),
    ],
)
def test_every_candidate_model_is_checked_and_named_in_the_error(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    model: str,
    pairs: str,
    models: list[str],
    param: str,
    message: str,
) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(pairs, models=models)), 422, param=param)
    assert message in error["message"]
    assert job_count(session) == 0


def test_another_tenants_checkpoint_is_no_candidate(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    other_tenant: Any,
    session: Session,
    model: str,
    pairs: str,
) -> None:
    from tests.api.helpers import real_lines, upload_ok

    theirs = upload_ok(client, other_auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 5), "o.jsonl")["id"]
    job_id, checkpoint_id = finished_job_with_checkpoint(session, other_tenant.id, theirs)
    for i, ref in enumerate((f"job:{job_id}", f"checkpoint:{checkpoint_id}")):
        body = evaluate(pairs, models=["HuggingFaceTB/SmolLM2-135M", ref])
        error = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_model", "models[1]")
        assert "no job" in error["message"] or "no such checkpoint" in error["message"], i
    assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(theirs)), 422, param="dataset_id")
    assert job_count(session) == 1  # only the other tenant's finished job


def test_at_most_eight_candidates_and_only_evaluate_takes_them(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    many = [f"org/model-{i}" for i in range(9)]
    assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(pairs, models=many)), 422, param="models")
    assert client.post("/v1/jobs", headers=auth, json=evaluate(pairs, models=many[:8])).status_code == 201
    dpo = {**evaluate(pairs, models=["org/other"]), "algorithm": "dpo"}
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo), 422, param="models")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"hyperparameters": {"max_samples": 0}}, "hyperparameters.max_samples"),
        ({"hyperparameters": {"max_samples": 10001}}, "hyperparameters.max_samples"),
        ({"hyperparameters": {"learning_rate": 1e-5}}, "hyperparameters.learning_rate"),
        ({"hyperparameters": {"do_sample": False, "num_generations": 2}}, "hyperparameters"),
        ({"lora": {"r": 8}}, "lora"),
        ({"eval_dataset_id": "ds_x"}, "eval_dataset_id"),
        ({"integrations": [{"type": "mlflow", "mlflow": {"experiment": "evals"}}]}, "integrations"),
    ],
)
def test_training_settings_and_out_of_range_hyperparameters_are_refused(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    model: str,
    pairs: str,
    extra: dict[str, Any],
    param: str,
) -> None:
    assert_error(client.post("/v1/jobs", headers=auth, json=evaluate(pairs, **extra)), 422, param=param)
    assert job_count(session) == 0


def test_the_hyperparameter_schema_of_evaluate_is_served(client: TestClient, auth: dict[str, str]) -> None:
    schema = client.get("/v1/hyperparameters/evaluate/schema", headers=auth)
    assert schema.status_code == 200
    assert schema.json() == EvaluateConfig.model_json_schema()
