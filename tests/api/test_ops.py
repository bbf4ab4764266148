"""Operations endpoints: liveness, readiness (database and broker), Prometheus metrics, OpenAPI docs."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
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


def test_metrics_exposes_job_counts_by_status_as_prometheus_text(
    client: TestClient, auth: dict[str, str], tenant: TenantKey, session: Session
) -> None:
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 3))
    for status in ("queued", "queued", "running", "succeeded"):
        session.add(
            Job(
                tenant_id=tenant.id,
                algorithm="dpo",
                base_model="m",
                dataset_id=ds["id"],
                hyperparameters={},
                status=status,
            )
        )
    session.commit()
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    lines = resp.text.splitlines()
    assert 'alignd_jobs{status="queued"} 2' in lines
    assert 'alignd_jobs{status="running"} 1' in lines
    assert 'alignd_jobs{status="failed"} 0' in lines
    assert 'alignd_jobs_by_algorithm{algorithm="dpo",status="succeeded"} 1' in lines
    assert "alignd_datasets 1" in lines
    assert "# TYPE alignd_jobs gauge" in lines
    age = next(line for line in lines if line.startswith("alignd_oldest_queued_job_age_seconds "))
    assert float(age.split()[1]) >= 0
