"""Jobs: everything checkable is checked before 201; idempotency; cancel; events, SSE, metrics, checkpoints."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.jobs import dispatch
from api.jobs.events import append_events, lock_job
from api.jobs.lifecycle import transition
from api.jobs.models import Job, JobEvent
from api.jobs.schemas import JobPublic
from tests.api.helpers import MODEL, assert_error
from trainer.config import DPOConfig


def dpo(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"algorithm": "dpo", "base_model": MODEL, "dataset_id": dataset_id, **extra}


def broker_messages(settings: Settings) -> list[dict[str, Any]]:
    """Celery messages waiting in this test's queue on the Redis broker (task name, args), once this
    process's dispatcher sent what it holds (api/jobs/dispatch.py: new jobs are sent after the response)."""
    assert dispatch.flush()
    r = redis.Redis.from_url(settings.resolved_broker_url)
    out = []
    for raw in r.lrange(settings.queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        out.append({"task": message["headers"]["task"], "args": args})
    return out


def job_count(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(Job)) or 0


# ---- create -------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_created_job_is_queued_with_defaults_filled_in_and_sent_to_the_broker_after_commit(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, model: str, pairs: str, backend: str
) -> None:
    body = dpo(pairs, hyperparameters={"beta": 0.2, "max_steps": 3}, lora={"r": 8}, name="first", metadata={"a": "1"})
    resp = client.post("/v1/jobs", headers=auth, json=body)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["status"] == "queued" and job["name"] == "first" and job["metadata"] == {"a": "1"}
    expected = DPOConfig(beta=0.2, max_steps=3).model_dump(mode="json")
    assert job["hyperparameters"] == expected
    assert job["lora"]["r"] == 8 and job["lora"]["alpha"] == 32
    assert job["progress"] == {"step": 0, "total_steps": None, "epoch": None, "eta_seconds": None}
    assert job["error"] is None and job["attempt"] == 0 and job["output_checkpoint_id"] is None
    for internal in ("worker_id", "lease_expires_at", "idempotency_key", "tenant_id", "last_event_seq"):
        assert internal not in job
    assert broker_messages(settings) == [{"task": "job.run", "args": [job["id"]]}]
    session.expire_all()
    assert session.get(Job, job["id"]).enqueued_at is not None  # type: ignore[union-attr]
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [(e["seq"], e["type"], e["data"]["status"]) for e in events["data"]] == [(1, "status", "queued")]


def test_same_idempotency_key_returns_the_same_job_with_200(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, model: str, pairs: str
) -> None:
    headers = {**auth, "Idempotency-Key": "submit-42"}
    first = client.post("/v1/jobs", headers=headers, json=dpo(pairs))
    again = client.post("/v1/jobs", headers=headers, json=dpo(pairs))
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert job_count(session) == 1
    assert len(broker_messages(settings)) == 1
    other = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "submit-43"}, json=dpo(pairs))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


def test_same_idempotency_key_returns_the_first_job_even_once_the_request_no_longer_validates(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, model: str, pairs: str
) -> None:
    headers = {**auth, "Idempotency-Key": "submit-44"}
    first = client.post("/v1/jobs", headers=headers, json=dpo(pairs))
    assert first.status_code == 201
    assert client.post(f"/v1/jobs/{first.json()['id']}/cancel", headers=auth).status_code == 200
    assert client.delete(f"/v1/datasets/{pairs}", headers=auth).status_code in (200, 204)

    again = client.post("/v1/jobs", headers=headers, json=dpo(pairs))  # its dataset is gone now
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "cancelled"
    assert job_count(session) == 1
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs)), 422, "invalid_request", "dataset_id")


def test_preference_dataset_given_to_grpo_or_ppo_is_422_and_creates_nothing(
    client: TestClient, auth: dict[str, str], settings: Settings, session: Session, model: str, pairs: str
) -> None:
    for algorithm in ("grpo", "ppo"):
        body = {
            "algorithm": algorithm,
            "base_model": model,
            "dataset_id": pairs,
            "reward": [{"type": "rule", "rule": "exact_match"}],
        }
        error = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_request", "dataset_id")
        assert f"preference dataset (openai_dpo format) given to {algorithm}, which needs prompts" in error["message"]
    assert job_count(session) == 0
    assert broker_messages(settings) == []


def test_prompt_dataset_given_to_dpo_is_422(client: TestClient, auth: dict[str, str], model: str, prompts: str) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json=dpo(prompts)), 422, param="dataset_id")
    assert "needs preference pairs" in error["message"]


def test_unknown_base_model_is_422(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    error = assert_error(
        client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model="no-such-model")),
        422,
        "invalid_model",
        "base_model",
    )
    assert "unknown model 'no-such-model'" in error["message"]
    assert job_count(session) == 0


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "./models/x", "../../secret", "~/model", "models/../../etc", "file:///etc/passwd", "C:\\models"],
)
def test_filesystem_path_as_base_model_is_rejected(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, path: str
) -> None:
    error = assert_error(
        client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model=path)), 422, param="base_model"
    )
    assert "path" in error["message"] or "not a model reference" in error["message"]
    assert job_count(session) == 0


def test_hub_ids_and_job_and_checkpoint_refs_resolve(
    client: TestClient, auth: dict[str, str], tenant: Any, session: Session, model: str, pairs: str
) -> None:
    assert (
        client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model="HuggingFaceTB/SmolLM2-135M")).status_code
        == 201
    )
    first = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    error = assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model=f"job:{first['id']}")), 422)
    assert "has no output checkpoint" in error["message"]
    job = session.get(Job, first["id"])
    assert job is not None
    ckpt = Checkpoint(
        tenant_id=tenant.id, job_id=job.id, step=3, kind="final", bytes=1, sha256="0" * 64, storage_key="k.tar"
    )
    session.add(ckpt)
    session.flush()
    job.status, job.output_checkpoint_id = "succeeded", ckpt.id
    session.commit()
    for ref in (f"job:{job.id}", f"checkpoint:{ckpt.id}"):
        assert client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model=ref)).status_code == 201, ref
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model="checkpoint:ckpt_nope")), 422)


def test_hub_ids_are_rejected_when_the_operator_disallows_them(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches

    monkeypatch.setenv("ALIGND_ALLOW_HUB_MODELS", "false")
    reset_caches()
    error = assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, base_model="org/model")), 422)
    assert "hub models are disabled" in error["message"]


@pytest.mark.parametrize(
    ("hyperparameters", "param"),
    [
        ({"beta": -1}, "hyperparameters.beta"),
        ({"learning_rate": 5}, "hyperparameters.learning_rate"),
        ({"batch_size": 0}, "hyperparameters.batch_size"),
        ({"lr_scheduler": "exotic"}, "hyperparameters.lr_scheduler"),
        ({"not_a_field": 1}, "hyperparameters.not_a_field"),
        ({"batch_size": 8, "micro_batch_size": 3}, "hyperparameters"),
    ],
)
def test_hyperparameter_out_of_bounds_is_422_naming_the_field(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    model: str,
    pairs: str,
    hyperparameters: dict,
    param: str,
) -> None:
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs, hyperparameters=hyperparameters))
    error = assert_error(resp, 422, "invalid_request", param)
    assert error["details"][0]["field"] == param
    assert job_count(session) == 0


def test_invalid_lora_and_unknown_algorithm_are_422_naming_the_field(
    client: TestClient, auth: dict[str, str], model: str, pairs: str
) -> None:
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, lora={"r": 0})), 422, param="lora.r")
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, algorithm="rlhf")), 422, param="algorithm")
    assert_error(client.post("/v1/jobs", headers=auth, json={"algorithm": "dpo"}), 422, param="base_model")
    malformed = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b"{nope")
    assert "not valid JSON" in assert_error(malformed, 400, "invalid_json")["message"]
    assert_error(client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}), 422, param="body")


def test_online_jobs_need_a_reward_and_offline_jobs_refuse_one(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, prompts: str
) -> None:
    grpo = {"algorithm": "grpo", "base_model": model, "dataset_id": prompts}
    assert_error(client.post("/v1/jobs", headers=auth, json=grpo), 422, param="reward")
    rule = [{"type": "rule", "rule": "exact_match", "weight": 1.0}]
    bad_regex = [{"type": "rule", "rule": "regex", "pattern": "("}]
    assert_error(
        client.post("/v1/jobs", headers=auth, json={**grpo, "reward": bad_regex}), 422, param="reward[0].rule.pattern"
    )
    bad_model = [{"type": "model", "model": "/srv/rm"}]
    assert_error(
        client.post("/v1/jobs", headers=auth, json={**grpo, "reward": bad_model}), 422, param="reward[0].model"
    )
    assert_error(
        client.post("/v1/jobs", headers=auth, json={**grpo, "reward_model_id": "rm_nope"}), 422, param="reward_model_id"
    )
    resp = client.post("/v1/jobs", headers=auth, json={**grpo, "reward": rule})
    assert resp.status_code == 201, resp.text
    [stored] = resp.json()["reward"]
    assert stored.items() >= {"type": "rule", "rule": "exact_match", "weight": 1.0, "column": "answer"}.items()
    assert resp.json()["hyperparameters"]["num_generations"] == 8
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, reward=rule)), 422, param="reward")


def test_unknown_dataset_is_422(client: TestClient, auth: dict[str, str], model: str) -> None:
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo("ds_nope")), 422, param="dataset_id")
    assert_error(
        client.post("/v1/jobs", headers=auth, json=dpo("ds_nope", eval_dataset_id="x")), 422, param="dataset_id"
    )


# ---- read and list ------------------------------------------------------------------------------


def test_list_filters_by_status_and_algorithm_and_pages(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, prompts: str
) -> None:
    ids = [client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()["id"] for _ in range(3)]
    reward = [{"type": "rule", "rule": "contains"}]
    grpo = client.post(
        "/v1/jobs",
        headers=auth,
        json={"algorithm": "grpo", "base_model": model, "dataset_id": prompts, "reward": reward},
    ).json()["id"]
    client.post(f"/v1/jobs/{ids[0]}/cancel", headers=auth)
    listed = client.get("/v1/jobs", headers=auth, params={"algorithm": "dpo", "limit": 2}).json()
    assert [j["id"] for j in listed["data"]] == [ids[2], ids[1]] and listed["has_more"]
    rest = client.get("/v1/jobs", headers=auth, params={"algorithm": "dpo", "after": listed["next_cursor"]}).json()
    assert [j["id"] for j in rest["data"]] == [ids[0]] and not rest["has_more"]
    cancelled = client.get("/v1/jobs", headers=auth, params={"status": "cancelled"}).json()["data"]
    assert [j["id"] for j in cancelled] == [ids[0]]
    assert [j["id"] for j in client.get("/v1/jobs", headers=auth, params={"algorithm": "grpo"}).json()["data"]] == [
        grpo
    ]
    assert_error(client.get("/v1/jobs", headers=auth, params={"status": "sleeping"}), 422, param="status")


# ---- cancel -------------------------------------------------------------------------------------


def set_job_status(session: Session, job_id: str, status: str) -> None:
    job = lock_job(session, job_id)
    transition(session, job, status)
    session.commit()


def test_cancel_of_queued_job_cancels_at_once_and_is_idempotent(
    client: TestClient, auth: dict[str, str], model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    first = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    assert first.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    assert [e["data"]["status"] for e in events] == ["queued", "cancelled"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_cancel_of_running_job_asks_the_worker_by_setting_cancelling(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, backend: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    set_job_status(session, job["id"], "running")
    resp = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelling"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelling"
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    assert [e["data"]["status"] for e in events] == ["queued", "running", "cancelling"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_job_get_sends_the_bytes_of_job_public_of_the_orm_row_and_another_tenant_gets_a_404(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    session: Session,
    model: str,
    pairs: str,
    backend: str,
) -> None:
    # The route reads columns with a Core SELECT and renders JobPublic itself: every field, filled in
    # (non-ASCII, floats, nested JSON, an error, timestamps), must come out as FastAPI rendered the ORM job.
    job_id = client.post("/v1/jobs", headers=auth, json=dpo(pairs, name="ünï ✓", metadata={"k": "é"})).json()["id"]
    set_job_status(session, job_id, "running")
    job = session.get(Job, job_id)
    assert job is not None
    job.progress = {"step": 3, "total_steps": 7, "epoch": 0.4285714285714286, "eta_seconds": 1e-07}
    job.metrics = {"train/loss": 0.6931471805599453, "train/reward_margin": -12.5, "note": "日本"}
    job.best_checkpoint_id, job.output_checkpoint_id = "ckpt_best", "ckpt_out"
    job.best_metric = {"name": "eval/loss", "mode": "min", "value": 0.1, "step": 2}
    job.error_code, job.error_message = "oom", "CUDA out of memory\n(tried 2 GiB)"
    session.commit()
    session.expire_all()
    resp = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    orm_job = session.get(Job, job_id)
    assert resp.content == TypeAdapter(JobPublic).dump_json(JobPublic.of(orm_job), by_alias=True)
    assert resp.json()["error"] == {"code": "oom", "message": "CUDA out of memory\n(tried 2 GiB)"}
    assert_error(client.get(f"/v1/jobs/{job_id}", headers=other_auth), 404, "not_found")
    assert_error(client.get("/v1/jobs/job_missing", headers=auth), 404, "not_found")


@pytest.mark.parametrize("final", ["succeeded", "failed"])
def test_cancelling_a_finished_job_is_409(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, final: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    set_job_status(session, job["id"], "running")
    set_job_status(session, job["id"], final)
    error = assert_error(client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth), 409, "job_finished")
    assert final in error["message"]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == final


# ---- pause and resume ---------------------------------------------------------------------------


def statuses_of(client: TestClient, auth: dict[str, str], job_id: str) -> list[str]:
    events = client.get(f"/v1/jobs/{job_id}/events", headers=auth).json()["data"]
    return [e["data"]["status"] for e in events if e["type"] == "status"]


def test_pause_of_a_queued_job_pauses_at_once_and_resume_queues_and_sends_it_again(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    for _ in range(2):  # idempotent
        paused = client.post(f"/v1/jobs/{job['id']}/pause", headers=auth)
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert session.get_one(Job, job["id"]).enqueued_at is None  # a stale delivery finds it paused
    for _ in range(2):
        resumed = client.post(f"/v1/jobs/{job['id']}/resume", headers=auth)
        assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    session.expire_all()
    assert session.get_one(Job, job["id"]).enqueued_at is not None  # sent to the broker after the commit
    assert statuses_of(client, auth, job["id"]) == ["queued", "paused", "queued"]
    assert [j["id"] for j in client.get("/v1/jobs", headers=auth, params={"status": "queued"}).json()["data"]] == [
        job["id"]
    ]


def test_pause_of_a_running_job_asks_the_worker_and_resume_waits_until_it_is_paused(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    set_job_status(session, job["id"], "running")
    resp = client.post(f"/v1/jobs/{job['id']}/pause", headers=auth)
    assert resp.status_code == 200 and resp.json()["status"] == "pausing"
    assert client.post(f"/v1/jobs/{job['id']}/pause", headers=auth).json()["status"] == "pausing"
    error = assert_error(client.post(f"/v1/jobs/{job['id']}/resume", headers=auth), 409, "job_not_resumable")
    assert "wait until it is paused" in error["message"]
    assert client.get("/v1/jobs", headers=auth, params={"status": "pausing"}).json()["data"][0]["id"] == job["id"]
    assert statuses_of(client, auth, job["id"]) == ["queued", "running", "pausing"]


def test_cancel_of_a_paused_job_cancels_it_at_once(
    client: TestClient, auth: dict[str, str], model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    client.post(f"/v1/jobs/{job['id']}/pause", headers=auth)
    resp = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert statuses_of(client, auth, job["id"]) == ["queued", "paused", "cancelled"]
    assert_error(client.post(f"/v1/jobs/{job['id']}/resume", headers=auth), 409, "job_not_resumable")


@pytest.mark.parametrize("status", ["cancelling", "succeeded", "failed"])
def test_pausing_a_cancelling_or_finished_job_is_409_and_changes_nothing(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, status: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    set_job_status(session, job["id"], "running")
    set_job_status(session, job["id"], status)
    error = assert_error(client.post(f"/v1/jobs/{job['id']}/pause", headers=auth), 409, "job_not_pausable")
    assert status in error["message"]
    assert_error(client.post(f"/v1/jobs/{job['id']}/resume", headers=auth), 409, "job_not_resumable")
    assert statuses_of(client, auth, job["id"]) == ["queued", "running", status]


def test_another_tenants_job_cannot_be_paused_or_resumed(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    for action in ("pause", "resume"):
        assert_error(client.post(f"/v1/jobs/{job['id']}/{action}", headers=other_auth), 404)
    assert statuses_of(client, auth, job["id"]) == ["queued"]


# ---- events, stream, metrics, checkpoints --------------------------------------------------------


def add_training_events(session: Session, job_id: str) -> None:
    job = lock_job(session, job_id)
    transition(session, job, "running")
    append_events(
        session,
        job,
        [
            ("metrics", {"step": 1, "values": {"loss": 0.69, "rewards/accuracies": 0.5}}),
            ("log", {"level": "info", "message": "step 1"}),
            ("metrics", {"step": 2, "values": {"loss": 0.61, "rewards/accuracies": 0.75}}),
            ("metrics", {"step": 3, "values": {"loss": 0.55, "eval/loss": 0.6}}),
        ],
    )
    session.commit()


def test_events_page_with_after_and_limit(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    add_training_events(session, job["id"])
    page = client.get(f"/v1/jobs/{job['id']}/events", headers=auth, params={"limit": 2}).json()
    assert [e["seq"] for e in page["data"]] == [1, 2] and page["has_more"]
    page = client.get(f"/v1/jobs/{job['id']}/events", headers=auth, params={"after": 2, "limit": 10}).json()
    assert [(e["seq"], e["type"]) for e in page["data"]] == [(3, "metrics"), (4, "log"), (5, "metrics"), (6, "metrics")]
    assert not page["has_more"]
    assert set(page["data"][0]) == {"seq", "created_at", "type", "data"}


def test_metrics_series_are_built_from_metrics_events(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    add_training_events(session, job["id"])
    series = client.get(f"/v1/jobs/{job['id']}/metrics", headers=auth).json()["series"]
    assert series == {
        "eval/loss": [[3, 0.6]],
        "loss": [[1, 0.69], [2, 0.61], [3, 0.55]],
        "rewards/accuracies": [[1, 0.5], [2, 0.75]],
    }


def parse_sse(text: str) -> list[dict[str, str]]:
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            events.append(fields)
    return events


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_event_stream_sends_every_event_then_ends_after_the_final_status_and_resumes_from_last_event_id(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, backend: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    add_training_events(session, job["id"])
    set_job_status(session, job["id"], "succeeded")
    resp = client.get(f"/v1/jobs/{job['id']}/events/stream", headers=auth)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(resp.text)
    assert [int(e["id"]) for e in events] == [1, 2, 3, 4, 5, 6, 7]
    assert [e["event"] for e in events] == ["status", "status", "metrics", "log", "metrics", "metrics", "status"]
    assert json.loads(events[-1]["data"])["data"]["status"] == "succeeded"
    # ISO 8601 UTC on both backends (SQLite stores naive datetimes; they come back as UTC).
    assert json.loads(events[0]["data"])["created_at"].endswith("Z")
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["created_at"].endswith("Z")
    resumed = parse_sse(client.get(f"/v1/jobs/{job['id']}/events/stream", headers={**auth, "Last-Event-ID": "5"}).text)
    assert [int(e["id"]) for e in resumed] == [6, 7]


def test_event_stream_delivers_events_written_while_it_is_open(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    import threading
    import time

    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()

    def worker_writes() -> None:
        from api.core.db import get_sessionmaker

        time.sleep(1.0)
        with get_sessionmaker()() as s:
            add_training_events(s, job["id"])
            time.sleep(0.5)
            set_job_status(s, job["id"], "succeeded")

    thread = threading.Thread(target=worker_writes)
    thread.start()
    with client.stream("GET", f"/v1/jobs/{job['id']}/events/stream", headers=auth) as resp:
        text = "".join(resp.iter_text())
    thread.join()
    assert [int(e["id"]) for e in parse_sse(text)] == [1, 2, 3, 4, 5, 6, 7]


def test_many_open_streams_share_one_watcher_and_each_gets_every_event_in_order_without_gaps(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from api.jobs import stream

    reads: dict[str, int] = {}
    ticks: list[int] = []
    real_poll, real_states = stream._poll, stream._job_states

    def counted_poll(job_id: str, after: int) -> Any:
        reads[job_id] = reads.get(job_id, 0) + 1
        return real_poll(job_id, after)

    def counted_states(job_ids: list[str]) -> Any:
        ticks.append(len(job_ids))
        return real_states(job_ids)

    monkeypatch.setattr(stream, "_poll", counted_poll)
    monkeypatch.setattr(stream, "_job_states", counted_states)
    jobs = [client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()["id"] for _ in range(5)]
    texts: dict[str, str] = {}

    def follow(job_id: str, headers: dict[str, str]) -> None:
        with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=headers) as resp:
            texts[job_id] = "".join(resp.iter_text())

    # The last stream resumes after event 1 (Last-Event-ID), the others start from the beginning.
    threads = [
        threading.Thread(target=follow, args=(j, {**auth, "Last-Event-ID": "1"} if i == 4 else auth))
        for i, j in enumerate(jobs)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)  # five idle streams: one query per tick for all of them, no reads of their events
    assert all(reads.get(j) == 1 for j in jobs), reads
    assert 2 <= len(ticks) <= 5 and max(ticks) == 5, ticks
    for job_id in jobs:  # then events for every job, as a worker writes them
        add_training_events(session, job_id)
    time.sleep(0.7)
    for job_id in jobs:
        set_job_status(session, job_id, "succeeded")
    for t in threads:
        t.join(timeout=20)
    for i, job_id in enumerate(jobs):
        expected = [2, 3, 4, 5, 6, 7] if i == 4 else [1, 2, 3, 4, 5, 6, 7]
        assert [int(e["id"]) for e in parse_sse(texts[job_id])] == expected, job_id
        assert reads[job_id] <= 4, reads  # woken only when its job had something new


def test_stream_rejects_a_last_event_id_that_is_not_a_seq(
    client: TestClient, auth: dict[str, str], model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    resp = client.get(f"/v1/jobs/{job['id']}/events/stream", headers={**auth, "Last-Event-ID": "abc"})
    assert_error(resp, 422, param="Last-Event-ID")


def test_job_checkpoints_are_listed_by_step_without_storage_keys(
    client: TestClient, auth: dict[str, str], tenant: Any, session: Session, model: str, pairs: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    for step, kind in [(10, "intermediate"), (20, "final"), (5, "intermediate")]:
        session.add(
            Checkpoint(
                tenant_id=tenant.id,
                job_id=job["id"],
                step=step,
                kind=kind,
                bytes=step * 100,
                sha256=f"{step:064d}",
                storage_key=f"checkpoints/{step}.tar",
                metrics={"loss": 1 / step},
            )
        )
    session.commit()
    page = client.get(f"/v1/jobs/{job['id']}/checkpoints", headers=auth).json()
    assert [(c["step"], c["kind"]) for c in page["data"]] == [(5, "intermediate"), (10, "intermediate"), (20, "final")]
    assert set(page["data"][0]) == {"id", "job_id", "step", "kind", "bytes", "sha256", "metrics", "created_at"}
    assert page["has_more"] is False


def test_broker_down_still_returns_the_committed_queued_job(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches
    from tests.services import free_port

    monkeypatch.setenv("ALIGND_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_caches()
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs))
    assert resp.status_code == 201 and resp.json()["status"] == "queued"
    assert dispatch.flush()  # the dispatcher tried, and failed, to send it
    assert job_count(session) == 1
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(JobEvent)) == 1
    # Not marked as sent, so the workers' reaper sends it once the broker is back.
    assert session.scalar(select(Job.enqueued_at)) is None


def test_concurrent_requests_with_one_idempotency_key_create_one_job(
    client: TestClient, auth: dict[str, str], tenant: Any, settings: Settings, session: Session, model: str, pairs: str
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from api.core.db import get_sessionmaker
    from api.jobs import service
    from api.jobs.schemas import JobCreate

    body = JobCreate.model_validate(dpo(pairs))

    def submit(_: int) -> tuple[str, bool]:
        with get_sessionmaker()() as s:
            job, created = service.create_job(s, settings, tenant.id, body, "same-key")
            return job.id, created

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(submit, range(4)))
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert job_count(session) == 1
    assert len(broker_messages(settings)) == 1


def test_submissions_to_one_dataset_do_not_wait_for_each_other_but_its_delete_waits_for_them(
    pairs: str, settings: Settings
) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import sessionmaker
    from sqlalchemy.pool import NullPool

    from api.datasets.models import Dataset
    from api.jobs.service import _check_dataset

    sessions = sessionmaker(create_engine(settings.resolved_database_url, poolclass=NullPool))
    with sessions() as first, sessions() as second:
        tenant_id = first.scalars(select(Dataset.tenant_id).where(Dataset.id == pairs)).one()
        first.rollback()
        # the first submission has checked the dataset and not committed its job yet
        assert _check_dataset(first, tenant_id, pairs, "dataset_id", "dpo", ("preference",)) == "preference"
        second.execute(text("SET lock_timeout = '1s'"))
        # a second submission's check goes through at once (it used to wait for the first's commit)
        assert _check_dataset(second, tenant_id, pairs, "dataset_id", "dpo", ("preference",)) == "preference"
        second.rollback()
        second.execute(text("SET lock_timeout = '1s'"))
        # the dataset's delete (its row FOR UPDATE) waits for the submissions in flight
        with pytest.raises(OperationalError, match="lock timeout"):
            second.execute(select(Dataset).where(Dataset.id == pairs).with_for_update())
        first.rollback()
