"""Auth: every /v1 route needs a key; keys are stored hashed; a tenant never sees another's resources."""

from __future__ import annotations

import hashlib

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from api.auth.models import ApiKey
from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.jobs.models import Job
from tests.api.helpers import assert_error, real_lines, upload_ok
from tests.conftest import TenantKey

V1_ROUTES = [
    ("GET", "/v1/datasets"),
    ("POST", "/v1/datasets"),
    ("POST", "/v1/datasets/validate"),
    ("GET", "/v1/datasets/ds_x"),
    ("GET", "/v1/datasets/ds_x/rows"),
    ("GET", "/v1/datasets/ds_x/examples"),
    ("GET", "/v1/datasets/ds_x/preview"),
    ("DELETE", "/v1/datasets/ds_x"),
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs/job_x"),
    ("POST", "/v1/jobs/job_x/cancel"),
    ("POST", "/v1/jobs/job_x/pause"),
    ("POST", "/v1/jobs/job_x/resume"),
    ("GET", "/v1/pipelines"),
    ("POST", "/v1/pipelines"),
    ("GET", "/v1/pipelines/pl_x"),
    ("POST", "/v1/pipelines/pl_x/cancel"),
    ("GET", "/v1/jobs/job_x/events"),
    ("GET", "/v1/jobs/job_x/events/stream"),
    ("GET", "/v1/jobs/job_x/metrics"),
    ("GET", "/v1/jobs/job_x/checkpoints"),
    ("GET", "/v1/hyperparameters/dpo/schema"),
    ("GET", "/v1/checkpoints/ckpt_x"),
    ("GET", "/v1/checkpoints/ckpt_x/download"),
    ("GET", "/v1/reward-models"),
    ("POST", "/v1/reward-models"),
    ("GET", "/v1/reward-models/rm_x"),
    ("DELETE", "/v1/reward-models/rm_x"),
    ("POST", "/v1/reward-models/rm_x/score"),
    ("GET", "/v1/models"),
    ("POST", "/v1/plan"),
    # OpenAI's fine-tuning API (api/openai_compat): the same keys, errors in OpenAI's shape.
    ("GET", "/v1/files"),
    ("POST", "/v1/files"),
    ("GET", "/v1/files/file_x"),
    ("DELETE", "/v1/files/file_x"),
    ("GET", "/v1/files/file_x/content"),
    ("GET", "/v1/fine_tuning/jobs"),
    ("POST", "/v1/fine_tuning/jobs"),
    ("GET", "/v1/fine_tuning/jobs/ftj_x"),
    ("POST", "/v1/fine_tuning/jobs/ftj_x/cancel"),
    ("POST", "/v1/fine_tuning/jobs/ftj_x/pause"),
    ("POST", "/v1/fine_tuning/jobs/ftj_x/resume"),
    ("GET", "/v1/fine_tuning/jobs/ftj_x/events"),
    ("GET", "/v1/fine_tuning/jobs/ftj_x/checkpoints"),
]


def test_every_v1_route_is_in_the_list_above(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    declared = {(m.upper(), p) for p, ops in paths.items() if p.startswith("/v1") for m in ops}
    listed = {(m, p.replace("ds_x", "{dataset_id}").replace("job_x", "{job_id}")) for m, p in V1_ROUTES}
    listed = {(m, p.replace("ckpt_x", "{checkpoint_id}").replace("rm_x", "{reward_model_id}")) for m, p in listed}
    listed = {(m, p.replace("file_x", "{file_id}").replace("ftj_x", "{fine_tuning_job_id}")) for m, p in listed}
    listed = {(m, p.replace("/dpo/", "/{algorithm}/").replace("pl_x", "{pipeline_id}")) for m, p in listed}
    assert declared == listed


BAD_HEADERS = [{}, {"Authorization": "Bearer alignd_not-a-real-key"}, {"Authorization": "Basic dXNlcjpwYXNz"}]


@pytest.mark.parametrize(("method", "path"), V1_ROUTES)
def test_v1_route_without_a_valid_key_is_401(client: TestClient, method: str, path: str) -> None:
    for headers in BAD_HEADERS:  # no key, an unknown key, not a Bearer header
        resp = client.request(method, path, headers=headers)
        if path.startswith(("/v1/files", "/v1/fine_tuning")):  # OpenAI's error object
            assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized", resp.text
            assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
        else:
            assert_error(resp, 401, "unauthorized")
        assert resp.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("cache_seconds", [0.0, 1.0])
def test_a_key_revoked_by_another_process_is_refused_within_auth_cache_seconds(
    client: TestClient, tenant: TenantKey, session: Session, monkeypatch: pytest.MonkeyPatch, cache_seconds: float
) -> None:
    import time

    from api.core.db import utcnow
    from api.core.settings import get_settings

    monkeypatch.setenv("ALIGND_AUTH_CACHE_SECONDS", str(cache_seconds))
    get_settings.cache_clear()
    assert client.get("/v1/datasets", headers=tenant.headers).status_code == 200  # the key is now trusted
    key = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).one()
    key.revoked_at = utcnow()  # written straight to the database, as `alignd keys revoke` does elsewhere
    session.commit()
    revoked = time.monotonic()

    answers = []
    while time.monotonic() - revoked < cache_seconds + 1.0:
        answers.append((time.monotonic() - revoked, client.get("/v1/datasets", headers=tenant.headers).status_code))
        if answers[-1][1] == 401:
            break
        time.sleep(0.05)
    refused_after, status = answers[-1]
    assert status == 401, answers
    assert refused_after <= cache_seconds + 0.2, answers  # the bound (plus one request's time)
    if cache_seconds == 0:
        assert len(answers) == 1  # no caching: the very next request is refused
    assert_error(client.get("/v1/datasets", headers=tenant.headers), 401, "unauthorized")  # and stays refused


def test_a_trusted_key_is_not_looked_up_again_on_every_request(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    from sqlalchemy import event

    from api.core.db import get_engine

    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 (conn, cursor, statement, ...)
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        for _ in range(3):
            assert client.get("/v1/jobs", headers=auth).status_code == 200
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    assert sum("api_keys" in s for s in statements) == 1, statements
    assert_error(client.get("/v1/jobs", headers={"Authorization": "Bearer alignd_unknown"}), 401, "unauthorized")


def test_keys_are_stored_as_sha256_only(tenant: TenantKey, session: Session) -> None:
    row = session.scalars(select(ApiKey).where(ApiKey.tenant_id == tenant.id)).one()
    assert row.key_hash == hashlib.sha256(tenant.key.encode()).hexdigest()
    assert tenant.key not in (row.key_hash, row.prefix)


def test_keys_create_prints_the_key_alone_on_the_last_line_and_it_works(settings: Settings, client: TestClient) -> None:
    from cli.main import app

    result = CliRunner().invoke(app, ["keys", "create", "--tenant", "initech", "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    key = result.output.rstrip("\n").splitlines()[-1]
    assert key.startswith("alignd_") and " " not in key
    assert client.get("/v1/datasets", headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_another_tenants_resources_are_404(
    client: TestClient, auth: dict[str, str], other_auth: dict[str, str], tenant: TenantKey, session: Session
) -> None:
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 3))
    job = Job(tenant_id=tenant.id, algorithm="dpo", base_model="m", dataset_id=ds["id"], hyperparameters={})
    session.add(job)
    session.flush()
    ckpt = Checkpoint(
        tenant_id=tenant.id, job_id=job.id, step=1, kind="final", bytes=1, sha256="0" * 64, storage_key="x.tar"
    )
    session.add(ckpt)
    session.commit()
    rm = client.post(
        "/v1/reward-models", headers=auth, json={"name": "r", "components": [{"type": "rule", "rule": "exact_match"}]}
    ).json()
    for method, path in [
        ("GET", f"/v1/datasets/{ds['id']}"),
        ("GET", f"/v1/datasets/{ds['id']}/rows"),
        ("DELETE", f"/v1/datasets/{ds['id']}"),
        ("GET", f"/v1/jobs/{job.id}"),
        ("POST", f"/v1/jobs/{job.id}/cancel"),
        ("GET", f"/v1/jobs/{job.id}/events"),
        ("GET", f"/v1/jobs/{job.id}/events/stream"),
        ("GET", f"/v1/jobs/{job.id}/metrics"),
        ("GET", f"/v1/jobs/{job.id}/checkpoints"),
        ("GET", f"/v1/checkpoints/{ckpt.id}"),
        ("GET", f"/v1/checkpoints/{ckpt.id}/download"),
        ("GET", f"/v1/reward-models/{rm['id']}"),
        ("DELETE", f"/v1/reward-models/{rm['id']}"),
    ]:
        assert_error(client.request(method, path, headers=other_auth), 404, "not_found")
    assert client.get("/v1/datasets", headers=other_auth).json()["data"] == []
    assert client.get("/v1/jobs", headers=other_auth).json()["data"] == []
    assert client.get("/v1/reward-models", headers=other_auth).json()["data"] == []
    # Still there for the owner (the other tenant's DELETE did nothing).
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 200
    assert client.get(f"/v1/reward-models/{rm['id']}", headers=auth).status_code == 200
    # Nor can the other tenant train on it.
    resp = client.post(
        "/v1/jobs", headers=other_auth, json={"algorithm": "dpo", "base_model": "org/model", "dataset_id": ds["id"]}
    )
    assert_error(resp, 422, param="dataset_id")
