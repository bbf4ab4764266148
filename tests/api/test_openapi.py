"""The OpenAPI schema declares the errors the API answers, and the answers keep to it (found by the fuzz)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import assert_error


def test_every_error_response_is_declared_with_the_error_json(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operations = {(m.upper(), p): op for p, item in schema["paths"].items() for m, op in item.items()}
    for (method, path), op in operations.items():
        responses = op["responses"]
        # OpenAI's fine-tuning surface answers OpenAI's error object, with 400 for invalid requests.
        openai = path.startswith(("/v1/files", "/v1/fine_tuning"))
        error_ref = {"$ref": f"#/components/schemas/{'OpenAIErrorResponse' if openai else 'ErrorResponse'}"}
        if path.startswith("/v1/"):
            assert "401" in responses, (method, path)
        if "{" in path:
            assert "404" in responses, (method, path)
        if "requestBody" in op:
            assert {"400", "413"} | (set() if openai else {"422"}) <= set(responses), (method, path)
        for code, response in responses.items():
            if code[0] in "45":
                assert response["content"] == {"application/json": {"schema": error_ref}}, (method, path, code)
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    assert set(operations[("POST", "/v1/datasets")]["responses"]) >= {"415"}


def test_validation_error_matches_the_declared_error_schema(client: TestClient, auth: dict[str, str]) -> None:
    error = assert_error(client.get("/v1/jobs?limit=0", headers=auth), 422, "invalid_request", "limit")
    assert error["details"] and error["details"][0]["field"] == "limit"


def test_method_not_allowed_lists_every_method_of_the_path(client: TestClient, auth: dict[str, str]) -> None:
    # /v1/datasets/{id} has two routes (GET and DELETE); Starlette alone names only the first one's methods.
    resp = client.put("/v1/datasets/ds_x", headers=auth)
    assert_error(resp, 405, "method_not_allowed")
    assert resp.headers["allow"] == "DELETE, GET"
    resp = client.options("/v1/datasets", headers=auth)
    assert_error(resp, 405)
    assert resp.headers["allow"] == "GET, POST"


def test_malformed_multipart_body_is_400_not_500(client: TestClient, auth: dict[str, str]) -> None:
    boundary = "f40477a892f77a47b4167440d7de9934"
    body = f"--{boundary}\r\n-9789413271--{boundary}--\r\n".encode()
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    for path in ("/v1/datasets", "/v1/datasets/validate"):
        assert_error(client.post(path, headers=headers, content=body), 400, "invalid_multipart")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/job_%00",
        "/v1/jobs/job_%00/events",
        "/v1/jobs/job_%00/metrics",
        "/v1/jobs/job_%00/checkpoints",
        "/v1/datasets/ds_%00",
        "/v1/datasets/ds_%00/rows",
        "/v1/checkpoints/ckpt_%00",
        "/v1/checkpoints/ckpt_%00/download",
        "/v1/reward-models/rm_%00",
    ],
)
def test_nul_character_in_an_id_is_404_on_postgres(client: TestClient, auth: dict[str, str], path: str) -> None:
    assert_error(client.get(path, headers=auth), 404, "not_found")


@pytest.mark.parametrize("resource", ["jobs", "datasets", "reward-models"])
@pytest.mark.parametrize("cursor", ["%C3%81%00", "AA", "x" * 5000])  # "AA" is base64 of a NUL byte
def test_cursor_that_names_no_item_is_422_on_postgres(
    client: TestClient, auth: dict[str, str], resource: str, cursor: str
) -> None:
    assert_error(client.get(f"/v1/{resource}?after={cursor}", headers=auth), 422, "invalid_request", "after")


def test_nul_character_in_a_query_parameter_is_422_naming_it(client: TestClient, auth: dict[str, str]) -> None:
    assert_error(client.get("/v1/jobs?status=queued%00", headers=auth), 422, "invalid_request", "status")


def test_method_not_allowed_on_a_fixed_path_does_not_list_the_methods_of_an_id_path(
    client: TestClient, auth: dict[str, str]
) -> None:
    resp = client.put("/v1/datasets/validate", headers=auth)  # not GET/DELETE of /v1/datasets/{dataset_id}
    assert_error(resp, 405)
    assert resp.headers["allow"] == "POST"
