"""Hostile or careless requests: every body, parameter and header is bounded, and a refusal stores nothing.

Each case answers 4xx with DESIGN §4's error JSON (param naming the field), never 500, and leaves no
job, reward model or dataset behind; the tenant's lists still work afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.settings import Settings
from api.core.validation import DB_INT_MAX
from api.reward_models.models import RewardModel
from tests.api.helpers import assert_error, assert_no_dataset_stored, real_lines, upload, upload_ok
from tests.api.test_jobs import dpo, job_count
from trainer.config import JOB_CONFIGS, LoraConfig, ModelComponent, RuleComponent

TOO_BIG = 10**20  # overflowed the database driver (a 500) before integers were bounded


def nested(depth: int, leaf: Any = "x") -> Any:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


def assert_no_job_and_lists_work(client: TestClient, auth: dict[str, str], session: Session) -> None:
    assert job_count(session) == 0
    resp = client.get("/v1/jobs", headers=auth)
    assert resp.status_code == 200 and resp.json()["data"] == [], resp.text


@pytest.fixture
def small_json_limit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    from api.core import reset_caches

    monkeypatch.setenv("ALIGND_MAX_JSON_BODY_BYTES", "4096")
    reset_caches()
    yield 4096
    reset_caches()


# ---- item 3: metadata, body size, nesting -------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_metadata_nested_300_deep_is_422_and_stores_no_job_so_the_list_still_works(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, backend: str
) -> None:
    # Before: the row was committed, then rendering the response hit pydantic's serialization depth
    # limit (500), and every later list page holding the job failed the same way.
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs, metadata={"a": nested(300)}))
    assert_error(resp, 422, "invalid_request", "metadata.a")
    assert_no_job_and_lists_work(client, auth, session)


@pytest.mark.parametrize(
    ("metadata", "param"),
    [
        ({f"k{i}": "v" for i in range(17)}, "metadata"),
        ({"k" * 65: "v"}, "metadata.kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk.[key]"),
        ({"": "v"}, "metadata..[key]"),
        ({"note": "v" * 513}, "metadata.note"),
        ({"count": 1}, "metadata.count"),
        ({"nested": {"a": "b"}}, "metadata.nested"),
        ([["a", "b"]], "metadata"),
    ],
)
def test_metadata_holds_at_most_16_keys_of_64_characters_with_string_values_of_512(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    model: str,
    pairs: str,
    metadata: Any,
    param: str,
) -> None:
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs, metadata=metadata))
    assert_error(resp, 422, "invalid_request", param)
    assert_no_job_and_lists_work(client, auth, session)


def test_metadata_at_its_bounds_is_kept(client: TestClient, auth: dict[str, str], model: str, pairs: str) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs, metadata=metadata))
    assert resp.status_code == 201, resp.text
    assert resp.json()["metadata"] == metadata


def test_eight_megabytes_of_metadata_are_413_under_the_default_one_mebibyte_limit(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings, model: str, pairs: str
) -> None:
    assert settings.max_json_body_bytes == 1024**2
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs, metadata={"blob": "x" * 8 * 1024**2}))
    error = assert_error(resp, 413, "payload_too_large", "body")
    assert str(1024**2) in error["message"]
    assert_no_job_and_lists_work(client, auth, session)


def test_a_streamed_body_without_content_length_is_counted_and_413_over_the_limit(
    client: TestClient, auth: dict[str, str], session: Session, small_json_limit: int, model: str, pairs: str
) -> None:
    def chunks() -> Iterator[bytes]:  # sent chunked: no Content-Length to trust
        yield b'{"algorithm": "dpo", "base_model": "tiny-llama", "dataset_id": "x", "name": "'
        for _ in range(small_json_limit // 100 + 1):
            yield b"n" * 100
        yield b'"}'

    headers = {**auth, "Content-Type": "application/json"}
    resp = client.post("/v1/jobs", headers=headers, content=chunks())
    assert "content-length" not in {k.lower() for k in resp.request.headers}
    assert_error(resp, 413, "payload_too_large", "body")
    # Just under the limit, a body passes on to validation.
    body = dpo(pairs, name="n" * 100)
    assert client.post("/v1/jobs", headers=auth, json=body).status_code == 201


def test_the_json_limit_does_not_cap_a_multipart_dataset_upload_but_caps_multipart_elsewhere(
    client: TestClient, auth: dict[str, str], session: Session, small_json_limit: int
) -> None:
    content = real_lines("orca-dpo-pairs.openai-dpo.jsonl", 20)
    assert len(content) > 4 * small_json_limit
    assert upload_ok(client, auth, content, "orca.jsonl")["rows"] == 20
    resp = upload(client, auth, content, "orca.jsonl", path="/v1/datasets/validate")
    assert resp.status_code == 200, resp.text
    assert_error(upload(client, auth, content, "orca.jsonl", path="/v1/jobs"), 413, "payload_too_large", "body")
    assert_no_job_and_lists_work(client, auth, session)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_json_nested_100k_deep_is_400_and_deep_hyperparameters_are_422(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, backend: str
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    for path in ("/v1/jobs", "/v1/reward-models"):
        resp = client.post(path, headers=headers, content=b"[" * 100_000)
        assert "nests too deeply" in assert_error(resp, 400, "invalid_json")["message"]
    deep = dpo(pairs, hyperparameters={"beta": nested(500, 0.1)})
    assert_error(client.post("/v1/jobs", headers=auth, json=deep), 422, "invalid_request", "hyperparameters.beta")
    assert_no_job_and_lists_work(client, auth, session)


# ---- item 4: integers bounded by what the database holds ----------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_event_seqs_beyond_a_bigint_are_422_in_the_query_and_in_last_event_id(
    client: TestClient, auth: dict[str, str], model: str, pairs: str, backend: str
) -> None:
    job = client.post("/v1/jobs", headers=auth, json=dpo(pairs)).json()
    events = f"/v1/jobs/{job['id']}/events"
    assert_error(client.get(events, headers=auth, params={"after": TOO_BIG}), 422, "invalid_request", "after")
    assert_error(client.get(f"{events}/stream", headers=auth, params={"after": TOO_BIG}), 422, param="after")
    for bad in (str(TOO_BIG), str(DB_INT_MAX + 1), "²".encode(), "-1", "1.5"):
        resp = client.get(f"{events}/stream", headers={**auth, "Last-Event-ID": bad})
        assert_error(resp, 422, "invalid_request", "Last-Event-ID")
    at_most = client.get(events, headers=auth, params={"after": DB_INT_MAX})
    assert at_most.status_code == 200 and at_most.json() == {"data": [], "has_more": False}
    assert client.get(events, headers=auth).json()["data"][0]["seq"] == 1


def test_a_dataset_row_offset_beyond_a_bigint_is_422(client: TestClient, auth: dict[str, str], pairs: str) -> None:
    rows = f"/v1/datasets/{pairs}/rows"
    assert_error(client.get(rows, headers=auth, params={"offset": TOO_BIG}), 422, "invalid_request", "offset")
    # Within a bigint but past the dataset's end: still a 422 that says how many rows there are.
    assert (
        "rows" in assert_error(client.get(rows, headers=auth, params={"offset": 1000}), 422, param="offset")["message"]
    )


def test_every_integer_a_client_sends_in_a_body_has_an_upper_bound_a_bigint_holds() -> None:
    models = [*JOB_CONFIGS.values(), LoraConfig, ModelComponent, RuleComponent]
    for config in models:
        for name, prop in config.model_json_schema()["properties"].items():
            for option in prop.get("anyOf", [prop]):
                if option.get("type") == "integer":
                    assert 0 < option.get("maximum", DB_INT_MAX + 1) <= DB_INT_MAX, (config.__name__, name)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"seed": 2**64}, "seed"),
        ({"hyperparameters": {"max_steps": TOO_BIG}}, "hyperparameters.max_steps"),
        ({"lora": {"r": TOO_BIG}}, "lora.r"),
    ],
)
def test_huge_integers_in_a_job_are_422(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, extra: Any, param: str
) -> None:
    assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, **extra)), 422, "invalid_request", param)
    assert_no_job_and_lists_work(client, auth, session)


# ---- item 6: unknown fields and strict integers -------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"hyperparmeters": {"beta": 0.5}}, "hyperparmeters"),
        ({"hyperparameters": {"bta": 0.5}}, "hyperparameters.bta"),
        ({"hyperparameters": {"num_generations": 4}}, "hyperparameters.num_generations"),  # grpo's, not dpo's
        ({"lora": {"rank": 8}}, "lora.rank"),
    ],
)
def test_an_unknown_field_of_a_job_is_422_naming_it(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, extra: Any, param: str
) -> None:
    error = assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, **extra)), 422, "invalid_request", param)
    assert "unknown field" in error["message"]
    assert_no_job_and_lists_work(client, auth, session)


def test_an_unknown_field_of_an_inline_reward_component_is_422_naming_it(
    client: TestClient, auth: dict[str, str], session: Session, model: str, prompts: str
) -> None:
    body = {
        "algorithm": "grpo",
        "base_model": model,
        "dataset_id": prompts,
        "reward": [{"type": "rule", "rule": "exact_match", "colum": "answer"}],
    }
    assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_request", "reward[0].rule.colum")
    assert_no_job_and_lists_work(client, auth, session)


def test_unknown_fields_of_reward_model_and_score_requests_are_422_naming_them(
    client: TestClient, auth: dict[str, str], session: Session
) -> None:
    rules = [{"type": "rule", "rule": "contains"}]
    typo = {"name": "rm", "components": rules, "descripton": "x"}
    assert_error(client.post("/v1/reward-models", headers=auth, json=typo), 422, "invalid_request", "descripton")
    assert session.scalar(select(func.count()).select_from(RewardModel)) == 0
    rm = client.post("/v1/reward-models", headers=auth, json={"name": "rm", "components": rules}).json()
    score = {"prompt": "2+2?", "completions": ["4"], "fields": {"answer": "4"}, "feilds": {}}
    assert_error(
        client.post(f"/v1/reward-models/{rm['id']}/score", headers=auth, json=score), 422, "invalid_request", "feilds"
    )


@pytest.mark.parametrize("value", [True, "3", 1.5, 3.0])
def test_integers_are_strict_no_bools_strings_or_fractions(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, value: Any
) -> None:
    for extra, param in (
        ({"hyperparameters": {"max_steps": value}}, "hyperparameters.max_steps"),
        ({"seed": value}, "seed"),
        ({"lora": {"r": value}}, "lora.r"),
    ):
        assert_error(client.post("/v1/jobs", headers=auth, json=dpo(pairs, **extra)), 422, "invalid_request", param)
    assert_no_job_and_lists_work(client, auth, session)


def test_nan_and_infinity_are_422(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str
) -> None:
    headers = {**auth, "Content-Type": "application/json"}
    for value in ("NaN", "Infinity"):
        body = f'{{"algorithm": "dpo", "base_model": "{model}", "dataset_id": "{pairs}", '
        body += f'"hyperparameters": {{"max_grad_norm": {value}}}}}'
        resp = client.post("/v1/jobs", headers=headers, content=body)
        assert_error(resp, 422, "invalid_request", "hyperparameters.max_grad_norm")
    assert_no_job_and_lists_work(client, auth, session)


# ---- item 8: NUL characters, which Postgres text and jsonb refuse -------------------------------


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"name": "a\x00b"}, "name"),
        ({"metadata": {"k": "v\x00"}}, "metadata.k"),
        ({"metadata": {"k\x00": "v"}}, "metadata.k\x00.[key]"),
        ({"base_model": "tiny-llama\x00"}, "base_model"),
        ({"eval_dataset_id": "ds_\x00"}, "eval_dataset_id"),
        ({"reward_model_id": "rm_\x00"}, "reward_model_id"),
        ({"lora": {"target_modules": ["q_proj\x00"]}}, "lora.target_modules"),
    ],
)
def test_nul_characters_in_a_job_are_422(
    client: TestClient,
    auth: dict[str, str],
    session: Session,
    model: str,
    pairs: str,
    backend: str,
    extra: Any,
    param: str,
) -> None:
    resp = client.post("/v1/jobs", headers=auth, json=dpo(pairs, **extra))
    assert "NUL" in assert_error(resp, 422, "invalid_request", param)["message"]
    assert_no_job_and_lists_work(client, auth, session)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
@pytest.mark.parametrize(
    ("component", "param"),
    [
        ({"type": "rule", "rule": "contains", "column": "ans\x00"}, "components[0].rule.column"),
        ({"type": "rule", "rule": "regex", "pattern": "a\x00"}, "components[0].rule.pattern"),
        ({"type": "model", "model": "rm\x00"}, "components[0].model.model"),
    ],
)
def test_nul_characters_in_a_reward_model_are_422(
    client: TestClient, auth: dict[str, str], session: Session, backend: str, component: Any, param: str
) -> None:
    resp = client.post("/v1/reward-models", headers=auth, json={"name": "rm", "components": [component]})
    assert_error(resp, 422, "invalid_request", param)
    named = {"name": "r\x00m", "components": [{"type": "rule", "rule": "contains"}]}
    assert_error(client.post("/v1/reward-models", headers=auth, json=named), 422, "invalid_request", "name")
    assert session.scalar(select(func.count()).select_from(RewardModel)) == 0
    assert client.get("/v1/reward-models", headers=auth).status_code == 200


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_nul_characters_in_the_url_are_404_or_422_and_in_a_header_422(
    client: TestClient, auth: dict[str, str], session: Session, model: str, pairs: str, backend: str
) -> None:
    assert_error(client.get("/v1/jobs/job_%00x", headers=auth), 404, "not_found", "path")  # no id holds one
    assert_error(client.get("/v1/datasets/ds_%00/rows", headers=auth), 404, "not_found", "path")
    assert_error(client.get("/v1/jobs?after=%00", headers=auth), 422, "invalid_request", "after")
    resp = client.post("/v1/jobs", headers={**auth, "Idempotency-Key": "k\x00"}, json=dpo(pairs))
    assert_error(resp, 422, "invalid_request", "idempotency-key")
    assert_no_job_and_lists_work(client, auth, session)


def test_a_request_refused_before_routing_on_openais_routes_has_openais_error_shape(
    client: TestClient, auth: dict[str, str]
) -> None:
    resp = client.get("/v1/fine_tuning/jobs?after=%00", headers=auth)
    assert resp.status_code == 400, resp.text  # OpenAI's clients get a 400 for a request they can fix
    assert resp.json()["error"] == {
        "message": "after: NUL characters are not allowed in the query string (%00)",
        "type": "invalid_request_error",
        "param": "after",
        "code": "invalid_request",
    }


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_nul_characters_in_the_dataset_name_or_file_name_are_422_and_store_nothing(
    client: TestClient, auth: dict[str, str], session: Session, settings: Settings, backend: str
) -> None:
    content = real_lines("orca-dpo-pairs.openai-dpo.jsonl", 3)
    assert_error(upload(client, auth, content, "orca.jsonl", name="or\x00ca"), 422, "invalid_request", "name")
    # httpx percent-encodes a NUL in a file name, so the part is written out by hand.
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="or\x00ca.jsonl"\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert_error(client.post("/v1/datasets", headers=headers, content=body), 422, "invalid_request", "file")
    assert_error(upload(client, auth, content, "orca.jsonl", name="n" * 301), 422, "invalid_request", "name")
    assert_no_dataset_stored(session, settings)
    assert client.get("/v1/datasets", headers=auth).json()["data"] == []


# ---- issue 8: eval data where it is ignored; the error shape in the schema ----------------------


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])
def test_an_eval_dataset_for_grpo_or_ppo_is_422_because_they_do_not_evaluate(
    client: TestClient, auth: dict[str, str], session: Session, model: str, prompts: str, algorithm: str
) -> None:
    body = {
        "algorithm": algorithm,
        "base_model": model,
        "dataset_id": prompts,
        "eval_dataset_id": prompts,
        "reward": [{"type": "rule", "rule": "exact_match"}],
    }
    error = assert_error(client.post("/v1/jobs", headers=auth, json=body), 422, "invalid_request", "eval_dataset_id")
    assert f"{algorithm} does not evaluate" in error["message"]
    assert_no_job_and_lists_work(client, auth, session)


def test_the_openapi_schema_gives_every_error_response_the_error_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    error = schema["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"]
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            errors = {status: r for status, r in operation["responses"].items() if status[0] in "45"}
            if path.startswith("/v1/"):
                assert "401" in errors, (method, path)
            if "requestBody" in operation:
                assert "413" in errors, (method, path)
            openai = path.startswith(("/v1/files", "/v1/fine_tuning"))  # OpenAI's own error object
            for status, response in errors.items():
                ref = response["content"]["application/json"]["schema"]["$ref"]
                expected = "OpenAIErrorResponse" if openai else "ErrorResponse"
                assert ref == f"#/components/schemas/{expected}", (method, path, status)
