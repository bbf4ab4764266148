"""`integrations` in a job request: W&B and MLflow as the hosted APIs take them, validated, kept, shown."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from tests.api.helpers import assert_error, real_lines, upload_ok

MODEL = "tiny-llama"


@pytest.fixture
def job_body(client: TestClient, auth: dict[str, str], settings: Settings) -> dict[str, Any]:
    (settings.resolved_models_dir / MODEL).mkdir(parents=True)
    (settings.resolved_models_dir / MODEL / "config.json").write_text("{}")
    dataset = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 5), "orca.jsonl")
    return {"algorithm": "dpo", "base_model": MODEL, "dataset_id": dataset["id"]}


def test_integrations_are_kept_with_the_job_and_shown_as_given(
    client: TestClient, auth: dict[str, str], job_body: dict[str, Any]
) -> None:
    integrations = [
        {"type": "wandb", "wandb": {"project": "align", "name": "run 1", "entity": "team", "tags": ["dpo", "v1"]}},
        {
            "type": "mlflow",
            "mlflow": {"experiment": "align", "run_name": "run 1", "tracking_uri": "https://mlflow.example"},
        },
    ]
    created = client.post("/v1/jobs", headers=auth, json={**job_body, "integrations": integrations})
    assert created.status_code == 201, created.text
    shown = client.get(f"/v1/jobs/{created.json()['id']}", headers=auth).json()["integrations"]
    assert shown[0] == integrations[0]
    assert shown[1] == integrations[1]
    plain = client.post("/v1/jobs", headers=auth, json=job_body).json()
    assert plain["integrations"] is None


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ([{"type": "tensorboard"}], "integrations[0].type"),
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": "secret"}}], "integrations[0].wandb.api_key"),
        ([{"type": "wandb", "wandb": {"project": ""}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "p" * 129}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": ["t"] * 17}}], "integrations[0].wandb.tags"),
        ([{"type": "wandb", "project": "p"}], "integrations[0].project"),
        ([{"type": "wandb"}], "integrations[0]"),
        ([{"type": "wandb", "mlflow": {"experiment": "e"}}], "integrations[0]"),
        ([{"type": "mlflow", "mlflow": {"experiment": "e", "tracking_uri": "file:///etc"}}], None),
        ([{"type": "mlflow", "mlflow": {"run_name": "r"}}], "integrations[0].mlflow.experiment"),
        ([{"type": "wandb", "wandb": {"project": "a"}}, {"type": "wandb", "wandb": {"project": "b"}}], "integrations"),
    ],
)
def test_malformed_integrations_are_422_naming_the_field(
    client: TestClient, auth: dict[str, str], job_body: dict[str, Any], integrations: list[Any], param: str | None
) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json={**job_body, "integrations": integrations}), 422)
    if param is not None:
        assert error["param"] == param, error
    else:  # a tracking_uri that is not http(s): the worker would write wherever a tenant says
        assert error["param"].startswith("integrations[0].mlflow.tracking_uri"), error
