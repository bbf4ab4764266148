"""The dashboard's server side: the page at `/` without a key, its assets, and the hyperparameter
schemas its job form is generated from (the very classes job create validates with)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

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
