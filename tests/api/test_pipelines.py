"""Pipelines on Postgres: a pipeline is checked whole at create (422s name the stage and field, nothing
stored), its first stages are queued at once, and each stage's end moves the rest in the same
transaction (driven here by direct life-cycle transitions, as a worker makes them); the reaper's pass
repairs a pipeline whose next stage was never created."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.datasets.models import Dataset
from api.jobs import lifecycle
from api.jobs.events import lock_job
from api.jobs.models import Job
from api.pipelines import advance
from api.pipelines.models import Pipeline
from api.pipelines.schemas import MAX_STAGES
from tests.api.helpers import assert_error

GRPO_HP = {"max_steps": 2, "batch_size": 2, "num_generations": 2, "max_new_tokens": 8}


def rm_then_grpo(model: str, pairs: str, prompts: str) -> dict[str, Any]:
    return {
        "name": "rlhf",
        "stages": [
            {"name": "rm", "job": {"algorithm": "reward", "base_model": model, "dataset_id": pairs}},
            {
                "name": "grpo",
                "job": {
                    "algorithm": "grpo",
                    "base_model": model,
                    "dataset_id": prompts,
                    "reward": [
                        {"type": "model", "model": "stage:rm", "name": "rm", "weight": 0.5},
                        {"type": "rule", "rule": "contains", "column": "answer", "weight": 1.0},
                    ],
                    "hyperparameters": dict(GRPO_HP),
                },
            },
        ],
    }


def create(client: TestClient, auth: dict[str, str], body: dict[str, Any], **headers: str) -> dict[str, Any]:
    resp = client.post("/v1/pipelines", headers={**auth, **headers}, json=body)
    assert resp.status_code == 201, resp.text
    return resp.json()


def get(client: TestClient, auth: dict[str, str], pipeline_id: str) -> dict[str, Any]:
    resp = client.get(f"/v1/pipelines/{pipeline_id}", headers=auth)
    assert resp.status_code == 200, resp.text
    return resp.json()


def finish(session: Session, job_id: str, status: str, **kwargs: Any) -> None:
    """Take a queued job through running to `status` as a worker would, committing once at the end."""
    job = lock_job(session, job_id)
    lifecycle.transition(session, job, "running")
    if status == "succeeded":
        succeed(session, job_id)
    elif status == "failed":
        lifecycle.fail(session, job, kwargs.get("code", "training_error"), kwargs.get("message", "loss became NaN"))
    else:
        lifecycle.transition(session, job, status)
    session.commit()


def succeed(session: Session, job_id: str) -> None:
    """A running job's final checkpoint and its success, as the relay records them (not committed)."""
    job = lock_job(session, job_id)
    checkpoint = Checkpoint(
        tenant_id=job.tenant_id, job_id=job.id, step=2, kind="final", bytes=1, sha256="0" * 64, storage_key="k"
    )
    session.add(checkpoint)
    session.flush()
    job.output_checkpoint_id = checkpoint.id
    lifecycle.transition(session, job, "succeeded")


def count(session: Session, model: Any) -> int:
    return session.scalar(select(func.count()).select_from(model)) or 0


def test_a_pipeline_queues_its_first_stage_and_waits_with_the_one_reading_its_output(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    assert pipeline["id"].startswith("pipe_")
    assert pipeline["status"] == "running" and pipeline["name"] == "rlhf"
    rm, grpo = pipeline["stages"]
    assert rm["status"] == "queued" and rm["job_id"] and rm["depends_on"] == []
    assert grpo == {
        "name": "grpo", "algorithm": "grpo", "status": "pending", "job_id": None, "depends_on": ["rm"], "reason": None
    }  # fmt: skip
    job = client.get(f"/v1/jobs/{rm['job_id']}", headers=auth).json()
    assert job["algorithm"] == "reward" and job["name"] == "rlhf/rm"
    assert get(client, auth, pipeline["id"]) == pipeline
    listed = client.get("/v1/pipelines", headers=auth).json()
    assert [p["id"] for p in listed["data"]] == [pipeline["id"]] and listed["has_more"] is False


def test_a_succeeded_stage_creates_the_next_stages_job_reading_its_output_in_the_same_commit(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    rm_job = pipeline["stages"][0]["job_id"]
    finish(session, rm_job, "succeeded")

    after = get(client, auth, pipeline["id"])
    grpo = after["stages"][1]
    assert after["status"] == "running" and grpo["status"] == "queued" and grpo["job_id"]
    job = client.get(f"/v1/jobs/{grpo['job_id']}", headers=auth).json()
    assert job["base_model"] == model
    assert job["reward"][0]["model"] == f"job:{rm_job}", "the GRPO stage scores with the RM stage's output"
    assert job["reward"][1]["rule"] == "contains"
    assert job["hyperparameters"]["num_generations"] == 2  # checked and filled in as POST /v1/jobs does

    finish(session, grpo["job_id"], "succeeded")
    done = get(client, auth, pipeline["id"])
    assert done["status"] == "succeeded" and done["finished_at"]
    final = client.get(f"/v1/jobs/{grpo['job_id']}", headers=auth).json()
    assert done["output_checkpoint_id"] == final["output_checkpoint_id"] is not None


def test_sft_then_dpo_trains_dpo_on_the_sft_output(
    client: TestClient, auth: dict[str, str], model: str, sft_rows: str, pairs: str, session: Session
) -> None:
    body = {
        "stages": [
            {"name": "sft", "job": {"algorithm": "sft", "base_model": model, "dataset_id": sft_rows}},
            {"name": "dpo", "job": {"algorithm": "dpo", "base_model": "stage:sft", "dataset_id": pairs}},
        ]
    }
    pipeline = create(client, auth, body)
    sft_job = pipeline["stages"][0]["job_id"]
    finish(session, sft_job, "succeeded")
    dpo_job = get(client, auth, pipeline["id"])["stages"][1]["job_id"]
    assert client.get(f"/v1/jobs/{dpo_job}", headers=auth).json()["base_model"] == f"job:{sft_job}"


def sft_then_evaluate(model: str, sft_rows: str, pairs: str, *candidates: str) -> dict[str, Any]:
    return {
        "name": "sft-eval",
        "stages": [
            {"name": "sft", "job": {"algorithm": "sft", "base_model": model, "dataset_id": sft_rows}},
            {
                "name": "eval",
                "job": {
                    "algorithm": "evaluate",
                    "base_model": model,
                    "dataset_id": pairs,
                    "models": list(candidates or ["stage:sft"]),
                },
            },
        ],
    }


def test_an_evaluate_stage_scores_an_earlier_stages_output_beside_the_base_model(
    client: TestClient, auth: dict[str, str], model: str, sft_rows: str, pairs: str, session: Session
) -> None:
    pipeline = create(client, auth, sft_then_evaluate(model, sft_rows, pairs))
    sft, evaluate = pipeline["stages"]
    assert sft["status"] == "queued"
    assert evaluate["status"] == "pending" and evaluate["depends_on"] == ["sft"] and evaluate["job_id"] is None

    finish(session, sft["job_id"], "succeeded")
    evaluate_job = get(client, auth, pipeline["id"])["stages"][1]["job_id"]
    job = client.get(f"/v1/jobs/{evaluate_job}", headers=auth).json()
    assert job["algorithm"] == "evaluate" and job["status"] == "queued"
    assert job["base_model"] == model
    assert job["models"] == [f"job:{sft['job_id']}"], "the evaluate stage scores the SFT stage's output"
    sft_job = client.get(f"/v1/jobs/{sft['job_id']}", headers=auth).json()
    assert sft_job["output_checkpoint_id"] is not None  # what job:<id> resolves to when the evaluation runs


@pytest.mark.parametrize(
    ("candidates", "param", "says"),
    [
        (["stage:nope"], "stages[1].job.models[0]", "no earlier stage"),
        (["stage:eval"], "stages[1].job.models[0]", "no earlier stage"),
        (["stage:sft", "stage:sft"], "stages[1].job.models[1]", "already evaluated"),
        (["stage:sft", "no-such-model"], "stages[1].job.models[1]", None),
    ],
    ids=["unknown-stage", "itself", "twice", "unknown-model-beside-it"],
)
def test_an_evaluate_stages_models_are_checked_at_create(
    client: TestClient, auth: dict[str, str], model: str, sft_rows: str, pairs: str, session: Session,
    candidates: list[str], param: str, says: str | None,
) -> None:  # fmt: skip
    body = sft_then_evaluate(model, sft_rows, pairs, *candidates)
    error = assert_error(client.post("/v1/pipelines", headers=auth, json=body), 422, param=param)
    if says is not None:
        assert says in error["message"], error
    assert count(session, Pipeline) == count(session, Job) == 0


def test_a_failed_stage_skips_the_rest_and_fails_the_pipeline_saying_why(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    finish(session, pipeline["stages"][0]["job_id"], "failed", message="dataset row 17: chosen is empty")

    after = get(client, auth, pipeline["id"])
    assert after["status"] == "failed" and after["finished_at"]
    assert after["error"]["code"] == "stage_failed"
    assert "'rm'" in after["error"]["message"] and "row 17" in after["error"]["message"]
    assert after["stages"][0]["status"] == "failed"
    assert after["stages"][1] | {"reason": None} == {**after["stages"][1], "status": "skipped", "reason": None}
    assert "'rm' failed" in after["stages"][1]["reason"]
    assert count(session, Job) == 1, "no job for a skipped stage"


def test_cancelling_a_stage_job_cancels_the_pipeline(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    resp = client.post(f"/v1/jobs/{pipeline['stages'][0]['job_id']}/cancel", headers=auth)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    after = get(client, auth, pipeline["id"])
    assert after["status"] == "cancelled" and after["error"] is None
    assert after["stages"][1]["status"] == "skipped" and "'rm' was cancelled" in after["stages"][1]["reason"]


def test_cancel_of_a_pipeline_stops_its_running_stage_and_skips_the_rest(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    rm_job = pipeline["stages"][0]["job_id"]
    job = lock_job(session, rm_job)
    lifecycle.transition(session, job, "running")
    session.commit()

    resp = client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=auth)
    assert resp.status_code == 200, resp.text
    cancelling = resp.json()
    assert cancelling["status"] == "cancelling", "the running stage's worker has yet to stop it"
    assert [s["status"] for s in cancelling["stages"]] == ["cancelling", "skipped"]
    assert cancelling["stages"][1]["reason"] == "the pipeline was cancelled"
    again = client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "cancelling"

    job = lock_job(session, rm_job)  # the worker stops the trainer
    lifecycle.transition(session, job, "cancelled")
    session.commit()
    after = get(client, auth, pipeline["id"])
    assert after["status"] == "cancelled" and after["finished_at"]
    assert [s["status"] for s in after["stages"]] == ["cancelled", "skipped"]


def test_cancel_of_a_pipeline_with_a_queued_stage_is_immediate_and_a_finished_one_is_409(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    resp = client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=auth)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert [s["status"] for s in resp.json()["stages"]] == ["cancelled", "skipped"]

    other = create(client, auth, rm_then_grpo(model, pairs, prompts))
    finish(session, other["stages"][0]["job_id"], "failed")
    assert_error(client.post(f"/v1/pipelines/{other['id']}/cancel", headers=auth), 409, "pipeline_finished")


def test_two_first_stages_both_must_succeed_before_the_stage_reading_both_starts(
    client: TestClient, auth: dict[str, str], model: str, sft_rows: str, pairs: str, prompts: str, session: Session
) -> None:
    body = rm_then_grpo(model, pairs, prompts)
    body["stages"].insert(0, {"name": "sft", "job": {"algorithm": "sft", "base_model": model, "dataset_id": sft_rows}})
    body["stages"][2]["job"]["base_model"] = "stage:sft"
    pipeline = create(client, auth, body)
    sft, rm, grpo = pipeline["stages"]
    assert sft["status"] == rm["status"] == "queued" and grpo["depends_on"] == ["rm", "sft"]

    finish(session, sft["job_id"], "succeeded")
    assert get(client, auth, pipeline["id"])["stages"][2]["status"] == "pending"
    finish(session, rm["job_id"], "succeeded")
    job_id = get(client, auth, pipeline["id"])["stages"][2]["job_id"]
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert job["base_model"] == f"job:{sft['job_id']}" and job["reward"][0]["model"] == f"job:{rm['job_id']}"


def test_a_failed_stage_cancels_a_sibling_still_running(
    client: TestClient, auth: dict[str, str], model: str, sft_rows: str, pairs: str, prompts: str, session: Session
) -> None:
    body = rm_then_grpo(model, pairs, prompts)
    body["stages"].insert(0, {"name": "sft", "job": {"algorithm": "sft", "base_model": model, "dataset_id": sft_rows}})
    pipeline = create(client, auth, body)
    finish(session, pipeline["stages"][1]["job_id"], "failed")
    after = get(client, auth, pipeline["id"])
    assert after["status"] == "failed"
    assert [s["status"] for s in after["stages"]] == ["cancelled", "failed", "skipped"]


def test_a_dataset_a_pending_stage_will_use_cannot_be_deleted_until_the_pipeline_is_cancelled(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    error = assert_error(client.delete(f"/v1/datasets/{prompts}", headers=auth), 409)
    assert pipeline["id"] in error["message"] and "cancel the pipeline" in error["message"]
    client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=auth)
    assert client.delete(f"/v1/datasets/{prompts}", headers=auth).status_code == 204


def test_a_stage_that_cannot_start_any_more_fails_the_pipeline(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    # Deleted behind the API's back (DELETE /v1/datasets refuses it while the stage waits for it).
    session.execute(update(Dataset).where(Dataset.id == prompts).values(deleted_at=func.now()))
    session.commit()
    finish(session, pipeline["stages"][0]["job_id"], "succeeded")
    after = get(client, auth, pipeline["id"])
    assert after["status"] == "failed" and after["error"]["code"] == "stage_not_started"
    assert after["stages"][1]["status"] == "skipped" and prompts in after["stages"][1]["reason"]


def test_the_reaper_creates_a_next_stage_that_a_crash_left_missing(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session, settings: Settings
) -> None:
    from worker.reaper import repair_pipelines

    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    rm_job = pipeline["stages"][0]["job_id"]
    checkpoint = Checkpoint(
        tenant_id=pipeline_tenant(session, pipeline["id"]), job_id=rm_job, step=1, kind="final", bytes=1,
        sha256="0" * 64, storage_key="k",
    )  # fmt: skip
    session.add(checkpoint)
    session.flush()
    # The stage's success committed without the life cycle's hook (an older worker, a crash, a bug).
    session.execute(update(Job).where(Job.id == rm_job).values(status="succeeded", output_checkpoint_id=checkpoint.id))
    session.commit()
    assert get(client, auth, pipeline["id"])["stages"][1]["status"] == "pending"

    sent: list[str] = []
    created = repair_pipelines(session, settings, sent.append)
    grpo = get(client, auth, pipeline["id"])["stages"][1]
    assert grpo["status"] == "queued" and created == sent == [grpo["job_id"]]
    assert repair_pipelines(session, settings, sent.append) == [], "a settled pipeline is left alone"
    assert advance.unsent_jobs(session, rm_job) == []


def pipeline_tenant(session: Session, pipeline_id: str) -> str:
    return session.get_one(Pipeline, pipeline_id).tenant_id


def _second(**job: Any) -> Any:
    return lambda b: b["stages"][1]["job"].update(job)


def _stages(b: dict[str, Any]) -> list[Any]:
    return list(b["stages"])


GRPO = "stages[1].job"
INVALID = [
    pytest.param(
        lambda b: b["stages"][1]["job"]["reward"][0].update(model="stage:nope"),
        f"{GRPO}.reward[0].model",
        "no earlier stage",
        id="unknown-stage",
    ),
    pytest.param(lambda b: b["stages"].reverse(), "stages[0].job.reward[0].model", "earlier", id="later-stage"),
    pytest.param(lambda b: b["stages"][1].update(name="rm"), "stages[1].name", "already named", id="duplicate-name"),
    pytest.param(_second(base_model="stage:rm"), f"{GRPO}.base_model", "reward stage", id="policy-from-reward-stage"),
    pytest.param(
        lambda b: b["stages"][0]["job"].update(algorithm="dpo"),
        f"{GRPO}.reward[0].model",
        "reward model",
        id="reward-from-policy-stage",
    ),
    pytest.param(
        lambda b: b["stages"][1]["job"]["hyperparameters"].update(num_generations=0),
        f"{GRPO}.hyperparameters.num_generations",
        "'grpo'",
        id="hyperparameter",
    ),
    pytest.param(
        lambda b: b["stages"][1]["job"].update(dataset_id=b["stages"][0]["job"]["dataset_id"]),
        f"{GRPO}.dataset_id",
        "'grpo'",
        id="dataset-kind",
    ),
    pytest.param(_second(base_model="no-such-model"), f"{GRPO}.base_model", "'grpo'", id="unknown-model"),
    pytest.param(_second(colour="red"), f"{GRPO}.colour", None, id="unknown-field"),
    pytest.param(lambda b: b["stages"][0].update(name="has space"), "stages[0].name", None, id="bad-name"),
    pytest.param(lambda b: b.update(stages=[]), "stages", None, id="no-stages"),
    pytest.param(lambda b: b.update(stages=_stages(b) * (MAX_STAGES // 2 + 1)), "stages", None, id="too-many"),
]


@pytest.mark.parametrize(("change", "param", "says"), INVALID)
def test_an_invalid_pipeline_is_a_422_naming_the_stage_and_field_and_stores_nothing(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session,
    change: Any, param: str, says: str | None,
) -> None:  # fmt: skip
    body = rm_then_grpo(model, pairs, prompts)
    change(body)
    error = assert_error(client.post("/v1/pipelines", headers=auth, json=body), 422, param=param)
    if says is not None:
        assert says in error["message"], error
    assert count(session, Pipeline) == count(session, Job) == 0


def test_another_tenants_pipelines_and_datasets_are_not_found(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    model: str,
    pairs: str,
    prompts: str,
) -> None:
    pipeline = create(client, auth, rm_then_grpo(model, pairs, prompts))
    assert_error(client.get(f"/v1/pipelines/{pipeline['id']}", headers=other_auth), 404, "not_found")
    assert_error(client.post(f"/v1/pipelines/{pipeline['id']}/cancel", headers=other_auth), 404, "not_found")
    assert client.get("/v1/pipelines", headers=other_auth).json()["data"] == []
    resp = client.post("/v1/pipelines", headers=other_auth, json=rm_then_grpo(model, pairs, prompts))
    assert_error(resp, 422, param="stages[0].job.dataset_id")


def test_an_idempotency_key_returns_the_first_pipeline(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str, session: Session
) -> None:
    first = create(client, auth, rm_then_grpo(model, pairs, prompts), **{"Idempotency-Key": "k1"})
    headers = {**auth, "Idempotency-Key": "k1"}
    again = client.post("/v1/pipelines", headers=headers, json=rm_then_grpo(model, pairs, prompts))
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert count(session, Pipeline) == count(session, Job) == 1


def test_pipelines_are_listed_newest_first_in_pages(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str
) -> None:
    ids = [create(client, auth, rm_then_grpo(model, pairs, prompts))["id"] for _ in range(3)]
    page = client.get("/v1/pipelines?limit=2", headers=auth).json()
    assert [p["id"] for p in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    rest = client.get(f"/v1/pipelines?limit=2&after={page['next_cursor']}", headers=auth).json()
    assert [p["id"] for p in rest["data"]] == ids[:1] and rest["has_more"] is False
    assert client.get("/v1/pipelines?status=succeeded", headers=auth).json()["data"] == []
    assert_error(client.get("/v1/pipelines?after=nope", headers=auth), 422, param="after")


def test_two_inputs_succeeding_at_once_in_two_transactions_start_the_stage_reading_both_exactly_once(
    client: TestClient, auth: dict[str, str], model: str, sft_rows: str, pairs: str, prompts: str, settings: Settings
) -> None:
    import threading

    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker
    from sqlalchemy.pool import NullPool

    body = rm_then_grpo(model, pairs, prompts)
    body["stages"].insert(0, {"name": "sft", "job": {"algorithm": "sft", "base_model": model, "dataset_id": sft_rows}})
    body["stages"][2]["job"]["base_model"] = "stage:sft"
    pipeline = create(client, auth, body)
    sft, rm, _ = pipeline["stages"]
    engine = create_engine(settings.resolved_database_url, poolclass=NullPool)
    sessions = sessionmaker(engine, info={"settings": settings})
    with sessions() as first, sessions() as second:
        for session, job_id in ((first, sft["job_id"]), (second, rm["job_id"])):
            lifecycle.transition(session, lock_job(session, job_id), "running")
            session.commit()
        # The first transaction ends sft and holds the pipeline's lock; the second ends rm meanwhile.
        succeed(first, sft["job_id"])
        assert get(client, auth, pipeline["id"])["stages"][2]["status"] == "pending"

        def end_rm() -> None:
            succeed(second, rm["job_id"])  # waits for the pipeline's lock
            second.commit()

        waiting = threading.Thread(target=end_rm)
        waiting.start()
        waiting.join(1.0)
        assert waiting.is_alive(), "the second transaction waits for the first's lock on the pipeline"
        first.commit()
        waiting.join(30)
        assert not waiting.is_alive()

    grpo = get(client, auth, pipeline["id"])["stages"][2]
    assert grpo["status"] == "queued", "the transaction that committed second saw the first's success"
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job).where(Job.algorithm == "grpo")) == 1
