"""The dashboard's server side: the page at `/` without a key, its assets, the hyperparameter schemas
its job form is generated from (the very classes job create validates with), and the dataset preview
as the trainer parses the rows."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import assert_error, upload_ok
from trainer.config import HYPERPARAMETERS


def test_the_page_and_its_assets_need_no_key_and_leave_docs_healthz_and_metrics_alone(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/dashboard/app.js" in page.text
    for asset in ("app.js", "api.js", "charts.js", "form.js", "style.css", "vendor/uplot/uPlot.esm.js"):
        assert client.get(f"/dashboard/{asset}").status_code == 200, asset
    assert client.get("/dashboard/vendor/uplot/LICENSE").text.startswith("The MIT License")
    assert client.get("/docs").status_code == 200
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/metrics").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/dashboard") for p in paths)
    assert "/v1/hyperparameters/{algorithm}/schema" in paths


def test_a_missing_asset_or_api_route_is_still_a_json_404(client: TestClient, auth: dict[str, str]) -> None:
    missing = client.get("/dashboard/nope.js")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/v1/nope", headers=auth).json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("algorithm", sorted(HYPERPARAMETERS))
def test_each_algorithms_hyperparameter_schema_is_its_config_class_schema(
    client: TestClient, auth: dict[str, str], algorithm: str
) -> None:
    schema = client.get(f"/v1/hyperparameters/{algorithm}/schema", headers=auth)
    assert schema.status_code == 200
    assert schema.json() == HYPERPARAMETERS[algorithm].model_json_schema()
    assert schema.json()["additionalProperties"] is False


def test_hyperparameter_schemas_need_a_key_and_a_known_algorithm(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/hyperparameters/dpo/schema").status_code == 401
    unknown = client.get("/v1/hyperparameters/rlhf/schema", headers=auth)
    assert unknown.status_code == 422 and unknown.json()["error"]["param"] == "algorithm"


def test_examples_show_rows_as_the_trainer_splits_them_and_only_to_their_tenant(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    rows = [
        {"chosen": "\n\nHuman: hi there\n\nAssistant: hello!", "rejected": "\n\nHuman: hi there\n\nAssistant: go away"},
        {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    ]
    # implicit_prompt: the shared prefix is the prompt (as the trainer reads hh-rlhf)
    dataset = upload_ok(client, auth, json.dumps(rows[0]).encode() + b"\n")
    page = client.get(f"/v1/datasets/{dataset['id']}/examples", headers=auth).json()
    (example,) = page["data"]
    assert example["prompt"].endswith("Human: hi there\n\nAssistant:")
    assert example["chosen"].strip() == "hello!" and example["rejected"].strip() == "go away"
    assert page["has_more"] is False and page["offset"] == 0

    standard = upload_ok(client, auth, b"".join(json.dumps(rows[1]).encode() + b"\n" for _ in range(3)))
    paged = client.get(f"/v1/datasets/{standard['id']}/examples?offset=1&limit=1", headers=auth).json()
    assert paged["data"] == [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "margin": None}]
    assert paged["has_more"] is True
    assert_error(client.get(f"/v1/datasets/{standard['id']}/examples", headers=other_auth), 404)
    assert_error(client.get(f"/v1/datasets/{standard['id']}/examples?offset=4", headers=auth), 422, param="offset")
