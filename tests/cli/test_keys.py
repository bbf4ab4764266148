"""`alignd keys list` and `alignd keys revoke`: a revoked key is refused on its next request (the CLI runs
in the test's process here, which forgets the key at once; other API processes refuse it within
`auth_cache_seconds`: tests/api/test_auth.py).

On Postgres; the tests marked with `backend` run on the embedded SQLite too.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner, Result

from api.auth.models import ApiKey
from api.auth.service import hash_key
from api.core.settings import Settings
from cli.main import app
from tests.api.helpers import assert_error
from tests.conftest import TenantKey, make_tenant


def alignd(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(app, [*args, "--data-dir", str(settings.data_dir)])


def key_id_of(session: Session, tenant: TenantKey) -> str:
    """The id of the key the fixture created (a tenant may hold several)."""
    return session.scalars(select(ApiKey.id).where(ApiKey.key_hash == hash_key(tenant.key))).one()


def listed(output: str) -> dict[str, list[str]]:
    """`keys list` rows by key id: [id, prefix, tenant, created, revoked]."""
    header, *rows = output.strip().splitlines()
    assert header.split("\t") == ["ID", "PREFIX", "TENANT", "CREATED", "REVOKED"]
    return {row.split("\t")[0]: row.split("\t") for row in rows}


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_a_revoked_key_is_refused_on_its_next_request(
    settings: Settings, client: TestClient, tenant: TenantKey, session: Session
) -> None:
    assert client.get("/v1/datasets", headers=tenant.headers).status_code == 200
    key_id = key_id_of(session, tenant)

    result = alignd(settings, "keys", "revoke", key_id)

    assert result.exit_code == 0, result.output
    assert key_id in result.output and "acme" in result.output
    assert_error(client.get("/v1/datasets", headers=tenant.headers), 401, "unauthorized")


def test_revoking_one_key_leaves_the_tenants_other_keys_working(
    settings: Settings, client: TestClient, tenant: TenantKey, session: Session
) -> None:
    rotated = make_tenant("acme")  # a second key for the same tenant: rotation is create new, revoke old

    assert alignd(settings, "keys", "revoke", key_id_of(session, tenant)).exit_code == 0

    assert_error(client.get("/v1/datasets", headers=tenant.headers), 401, "unauthorized")
    assert client.get("/v1/datasets", headers=rotated.headers).status_code == 200


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_keys_list_shows_id_prefix_tenant_and_revocation_but_never_the_key_or_its_hash(
    settings: Settings, tenant: TenantKey, other_tenant: TenantKey, session: Session
) -> None:
    revoked_id = key_id_of(session, tenant)
    live_id = key_id_of(session, other_tenant)
    assert alignd(settings, "keys", "revoke", revoked_id).exit_code == 0

    result = alignd(settings, "keys", "list")

    assert result.exit_code == 0, result.output
    rows = listed(result.output)
    assert set(rows) == {revoked_id, live_id}
    _, prefix, name, created, revoked = rows[revoked_id]
    assert tenant.key.startswith(prefix) and name == "acme"
    assert created.endswith("+00:00") and revoked.endswith("+00:00") and revoked >= created
    assert rows[live_id][2] == "globex" and rows[live_id][4] == "-"
    for row in session.scalars(select(ApiKey)):
        assert row.key_hash not in result.output
    assert tenant.key not in result.output and other_tenant.key not in result.output


def test_keys_list_for_one_tenant_shows_only_its_keys(
    settings: Settings, tenant: TenantKey, other_tenant: TenantKey, session: Session
) -> None:
    result = alignd(settings, "keys", "list", "--tenant", "globex")

    assert result.exit_code == 0, result.output
    assert set(listed(result.output)) == {key_id_of(session, other_tenant)}


def test_keys_list_for_an_unknown_tenant_exits_non_zero_and_says_so(settings: Settings, tenant: TenantKey) -> None:
    result = alignd(settings, "keys", "list", "--tenant", "initech")

    assert result.exit_code == 1
    assert "no tenant named 'initech'" in result.output


def test_revoking_an_unknown_key_id_exits_non_zero_and_says_so(settings: Settings, tenant: TenantKey) -> None:
    result = alignd(settings, "keys", "revoke", "key_does_not_exist")

    assert result.exit_code == 1
    assert "no API key with id 'key_does_not_exist'" in result.output
    assert "alignd keys list" in result.output


def test_revoking_a_revoked_key_again_succeeds_and_keeps_the_first_revocation_time(
    settings: Settings, tenant: TenantKey, session: Session
) -> None:
    key_id = key_id_of(session, tenant)
    assert alignd(settings, "keys", "revoke", key_id).exit_code == 0
    first = session.scalars(select(ApiKey.revoked_at).where(ApiKey.id == key_id)).one()

    again = alignd(settings, "keys", "revoke", key_id)

    assert again.exit_code == 0, again.output
    session.expire_all()
    assert session.scalars(select(ApiKey.revoked_at).where(ApiKey.id == key_id)).one() == first
