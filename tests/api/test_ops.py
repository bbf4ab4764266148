"""Operations endpoints: liveness, readiness (database and broker), Prometheus metrics, OpenAPI docs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy.orm import Session

from api.jobs.models import Job
from tests.api.helpers import assert_error, real_lines, upload_ok
from tests.conftest import TenantKey


def test_healthz_and_docs_need_no_key(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_readyz_reports_database_and_broker(client: TestClient, backend: str) -> None:
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready", "database": "ok", "broker": "ok"}


def test_readyz_is_503_when_the_broker_is_unreachable(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from api.core import reset_caches
    from tests.services import free_port

    monkeypatch.setenv("ALIGND_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    reset_caches()
    error = assert_error(client.get("/readyz"), 503, "not_ready")
    assert error["message"] == "unreachable: broker"


def scrape(client: TestClient) -> dict[str, list[Sample]]:
    """GET /metrics parsed by prometheus_client's own parser: metric family name -> its samples."""
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {family.name: family.samples for family in text_string_to_metric_families(resp.text)}


def value(families: dict[str, list[Sample]], sample_name: str, **labels: str) -> float | None:
    """The value of the sample with exactly these labels (among others), or None when absent."""
    for samples in families.values():
        for sample in samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_metrics_parse_as_prometheus_text_with_job_counts_queue_and_stored_objects(
    client: TestClient, auth: dict[str, str], tenant: TenantKey, session: Session, backend: str
) -> None:
    before = scrape(client)
    assert value(before, "alignd_queue_depth") == 0 and value(before, "alignd_oldest_queued_job_age_seconds") == 0
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 3))
    for status in ("queued", "queued", "running", "succeeded"):
        job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=ds["id"], hyperparameters={})
        job.status = status
        session.add(job)
    session.commit()

    families = scrape(client)

    assert value(families, "alignd_jobs", status="queued") == 2
    assert value(families, "alignd_jobs", status="running") == 1
    assert value(families, "alignd_jobs", status="failed") == 0
    assert value(families, "alignd_jobs_by_algorithm", algorithm="dpo", status="succeeded") == 1
    assert value(families, "alignd_queue_depth") == 2
    assert value(families, "alignd_oldest_queued_job_age_seconds") >= 0  # type: ignore[operator]
    assert value(families, "alignd_running_attempts") == 1
    assert value(families, "alignd_datasets") == 1
    assert value(families, "alignd_dataset_bytes") == ds["bytes"]
    assert value(families, "alignd_checkpoints") == 0


def test_request_latency_is_counted_by_route_template_not_by_raw_path(client: TestClient, auth: dict[str, str]) -> None:
    route = "/v1/jobs/{job_id}"
    before = scrape(client)
    count_before = value(before, "alignd_http_request_duration_seconds_count", method="GET", route=route) or 0

    for job_id in ("job_a", "job_b", "job_c"):
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 404
    assert client.get("/no/such/path").status_code == 404

    families = scrape(client)
    assert value(families, "alignd_http_request_duration_seconds_count", method="GET", route=route) == count_before + 3
    assert value(families, "alignd_http_requests_total", method="GET", route=route, status="404") >= 3  # type: ignore[operator]
    assert value(families, "alignd_http_requests_total", method="GET", route="<unmatched>", status="404") >= 1  # type: ignore[operator]
    routes = {s.labels.get("route") for s in families["alignd_http_request_duration_seconds"]}
    assert not any("job_a" in (r or "") for r in routes), routes
    buckets = [
        s
        for s in families["alignd_http_request_duration_seconds"]
        if s.name.endswith("_bucket") and s.labels["route"] == route
    ]
    assert buckets and buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count_before + 3


def test_sample_alert_rules_parse_and_name_only_metrics_that_metrics_exposes(client: TestClient) -> None:
    import re
    from pathlib import Path

    import yaml

    rules_file = Path(__file__).parents[2] / "docker" / "alerts.yml"
    rules = [rule for group in yaml.safe_load(rules_file.read_text())["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {"AligndJobNoStep", "AligndQueueTooOld", "AligndHighServerErrorRate"}
    no_step = next(r for r in rules if r["alert"] == "AligndJobNoStep")
    assert "alignd_job_seconds_since_last_step" in no_step["expr"] and "> 600" in no_step["expr"]
    client.get("/healthz")  # so the per-process HTTP series exist in this process
    resp = client.get("/metrics")
    exposed = {
        name
        for family in text_string_to_metric_families(resp.text)
        for name in (family.name, *(s.name for s in family.samples))
    }
    for rule in rules:
        assert {"alert", "expr", "labels", "annotations"} <= set(rule), rule
        used = set(re.findall(r"\balignd_[a-z_]+", rule["expr"]))
        assert used and used <= exposed, (rule["alert"], used - exposed)
