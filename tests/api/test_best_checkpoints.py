"""Issue 11: evaluation during grpo/ppo, best_metric and early stopping as the API validates and shows them."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.jobs.models import Job
from tests.api.helpers import assert_error

RULE = [{"type": "rule", "rule": "contains", "name": "has_answer"}]


def online(algorithm: str, dataset: str, model: str, eval_dataset: str | None, **hyper: Any) -> dict[str, Any]:
    body = {"algorithm": algorithm, "base_model": model, "dataset_id": dataset, "reward": RULE}
    body["hyperparameters"] = hyper
    return body | ({"eval_dataset_id": eval_dataset} if eval_dataset else {})


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_grpo_and_ppo_take_a_prompt_eval_set_and_fill_in_the_eval_and_best_metric_defaults(
    client: TestClient, auth: dict[str, str], model: str, prompts: str, algorithm: str
) -> None:
    body = online(algorithm, prompts, model, prompts, eval_every=5, best_metric="reward", early_stopping_patience=2)
    resp = client.post("/v1/jobs", headers=auth, json=body)
    assert resp.status_code == 201, resp.text
    job = resp.json()
    assert job["eval_dataset_id"] == prompts
    hyper = job["hyperparameters"]
    assert (hyper["best_metric"], hyper["best_metric_mode"]) == ("eval/reward", "max")
    assert (hyper["eval_every"], hyper["early_stopping_patience"], hyper["early_stopping_threshold"]) == (5, 2, 0.0)
    assert (hyper["eval_temperature"], hyper["eval_num_generations"]) == (0.0, 1)
    assert job["best_checkpoint_id"] is None and job["best_metric"] is None


def test_an_eval_set_of_the_wrong_kind_for_grpo_is_422_naming_eval_dataset_id(
    client: TestClient, auth: dict[str, str], model: str, prompts: str, pairs: str
) -> None:
    error = assert_error(
        client.post("/v1/jobs", headers=auth, json=online("grpo", prompts, model, pairs)), 422, param="eval_dataset_id"
    )
    assert "needs prompts" in error["message"]


@pytest.mark.parametrize(
    ("algorithm", "metric", "fragment"),
    [
        ("dpo", "eval/reward", "eval/rewards/margins"),  # dpo reports eval/loss, eval/rewards/..., not a reward
        ("grpo", "eval/loss", "eval/reward"),  # grpo's evaluation generates and scores: no loss
        ("grpo", "eval/rewards/not_a_component", "has_answer"),
        ("ppo", "eval/kl", "eval/reward"),
    ],
)
def test_a_best_metric_the_algorithm_does_not_report_at_evaluation_is_422_naming_it(
    client: TestClient,
    auth: dict[str, str],
    model: str,
    prompts: str,
    pairs: str,
    algorithm: str,
    metric: str,
    fragment: str,
) -> None:
    if algorithm == "dpo":
        body: dict[str, Any] = {"algorithm": "dpo", "base_model": model, "dataset_id": pairs, "eval_dataset_id": pairs}
        body["hyperparameters"] = {"best_metric": metric}
    else:
        body = online(algorithm, prompts, model, prompts, best_metric=metric)
    error = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, param="hyperparameters.best_metric")
    assert metric in error["message"] and fragment in error["message"]


def test_a_reward_component_metric_of_a_stored_reward_model_is_a_valid_best_metric(
    client: TestClient, auth: dict[str, str], model: str, prompts: str
) -> None:
    resp = client.post("/v1/reward-models", headers=auth, json={"name": "rm", "components": RULE})
    assert resp.status_code == 201, resp.text
    body = online("grpo", prompts, model, prompts, best_metric="rewards/has_answer")
    body["reward_model_id"] = resp.json()["id"]
    del body["reward"]
    created = client.post("/v1/jobs", headers=auth, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["hyperparameters"]["best_metric"] == "eval/rewards/has_answer"
    body["hyperparameters"] = {"best_metric": "eval/rewards/length"}
    assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, param="hyperparameters.best_metric")


@pytest.mark.parametrize(
    ("hyper", "eval_set", "field", "fragment"),
    [
        ({"best_metric": "eval/reward"}, False, "best_metric", "eval_dataset_id"),
        ({"best_metric": "eval/reward", "early_stopping_patience": 3}, True, "early_stopping_patience", "eval_every"),
        ({"eval_every": 2, "early_stopping_patience": 3}, True, "early_stopping_patience", "best_metric"),
        ({"eval_num_generations": 4}, True, "eval_num_generations", "eval_temperature"),
        ({"eval_temperature": -0.5}, True, "eval_temperature", "greater than or equal"),
        ({"best_metric_mode": "up", "best_metric": "eval/reward"}, True, "best_metric_mode", "'min'"),
    ],
)  # fmt: skip
def test_early_stopping_and_eval_generation_settings_are_checked_before_201(
    client: TestClient,
    auth: dict[str, str],
    model: str,
    prompts: str,
    hyper: dict[str, Any],
    eval_set: bool,
    field: str,
    fragment: str,
) -> None:
    body = online("grpo", prompts, model, prompts if eval_set else None, **hyper)
    error = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, param=f"hyperparameters.{field}")
    assert fragment in error["message"]


def test_the_job_shows_its_best_checkpoint_and_the_checkpoint_list_its_kind(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    body = {"algorithm": "dpo", "base_model": model, "dataset_id": pairs, "eval_dataset_id": pairs}
    body["hyperparameters"] = {"eval_every": 1, "best_metric": "loss"}
    job_id = client.post("/v1/jobs", headers=auth, json=body).json()["id"]
    job = session.get_one(Job, job_id)
    assert job.hyperparameters["best_metric_mode"] == "min"
    best = Checkpoint(
        tenant_id=job.tenant_id, job_id=job_id, step=3, kind="best", bytes=10, sha256="0" * 64,
        storage_key="k", metrics={"eval/loss": 0.25},
    )  # fmt: skip
    session.add(best)
    session.flush()
    job.best_checkpoint_id = best.id  # what the relay does (tests/worker/test_relay.py)
    job.best_metric = {"name": "eval/loss", "mode": "min", "value": 0.25, "step": 3}
    session.commit()

    shown = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    assert shown["best_checkpoint_id"] == best.id
    assert shown["best_metric"] == {"name": "eval/loss", "mode": "min", "value": 0.25, "step": 3}
    listed = client.get(f"/v1/jobs/{job_id}/checkpoints", headers=auth).json()["data"]
    assert [(c["id"], c["kind"]) for c in listed] == [(best.id, "best")]
