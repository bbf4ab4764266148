"""The retry policy, on a scripted transport (httpx.MockTransport): which failures are retried, how
often, with what backoff, and that a retried job creation keeps its Idempotency-Key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from client import APIConnectionError, Client, InvalidRequestError, RetryPolicy, ServiceUnavailableError

JOB = {
    "id": "job_1",
    "algorithm": "dpo",
    "status": "queued",
    "base_model": "m",
    "dataset_id": "ds_1",
    "hyperparameters": {},
    "created_at": "2026-01-01T00:00:00Z",
}
UNAVAILABLE = httpx.Response(503, json={"error": {"code": "not_ready", "message": "database unreachable"}})


def scripted(*answers: httpx.Response | Exception) -> tuple[Callable[..., Client], list[httpx.Request]]:
    """A client whose transport gives `answers` in turn (an exception is raised as a transport failure)."""
    seen: list[httpx.Request] = []
    waits: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def make(**options: object) -> Client:
        client = Client(
            "http://alignd.test", api_key="k", transport=httpx.MockTransport(handle), sleep=waits.append, **options
        )  # type: ignore[arg-type]
        client.waits = waits  # type: ignore[attr-defined]
        return client

    return make, seen


def test_a_503_is_retried_with_growing_backoff_until_it_succeeds() -> None:
    make, seen = scripted(UNAVAILABLE, UNAVAILABLE, httpx.Response(200, json=JOB))
    client = make()

    assert client.jobs.get("job_1").id == "job_1"

    assert len(seen) == 3
    first, second = client.waits  # type: ignore[attr-defined]
    assert 0.25 <= first <= 0.5 and 0.5 <= second <= 1.0


def test_a_422_is_never_retried() -> None:
    refused = httpx.Response(422, json={"error": {"code": "invalid_request", "message": "no", "param": "lora.r"}})
    make, seen = scripted(refused, httpx.Response(200, json=JOB))

    with pytest.raises(InvalidRequestError) as error:
        make().jobs.get("job_1")

    assert len(seen) == 1 and error.value.param == "lora.r" and error.value.message == "no"


def test_retries_are_bounded_and_the_last_error_is_raised() -> None:
    make, seen = scripted(UNAVAILABLE)

    with pytest.raises(ServiceUnavailableError) as error:
        make(max_retries=2).jobs.get("job_1")

    assert len(seen) == 3 and error.value.code == "not_ready" and error.value.status_code == 503


def test_a_connection_error_is_retried_and_then_reported_as_apiconnectionerror() -> None:
    make, seen = scripted(httpx.ConnectError("refused"), httpx.Response(200, json=JOB))
    assert make().jobs.get("job_1").id == "job_1" and len(seen) == 2

    make, seen = scripted(httpx.ReadError("reset"))
    with pytest.raises(APIConnectionError):
        make(max_retries=1).jobs.get("job_1")
    assert len(seen) == 2


def test_a_retried_job_creation_sends_the_same_idempotency_key_each_time() -> None:
    make, seen = scripted(httpx.ReadError("reset"), UNAVAILABLE, httpx.Response(201, json=JOB))

    make().jobs.create(algorithm="dpo", base_model="m", dataset_id="ds_1")

    keys = {request.headers["Idempotency-Key"] for request in seen}
    assert len(seen) == 3 and len(keys) == 1 and len(keys.pop()) == 36  # one uuid4


def test_an_upload_is_retried_only_when_it_cannot_have_been_received(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    dataset = {
        **JOB,
        "id": "ds_1",
        "name": "d",
        "kind": "preference",
        "format": "standard",
        "rows": 1,
        "bytes": 48,
        "sha256": "0" * 64,
    }
    make, seen = scripted(httpx.ConnectError("refused"), UNAVAILABLE, httpx.Response(201, json=dataset))
    assert make().datasets.upload(data).id == "ds_1"
    assert len(seen) == 3 and all(data.read_bytes() in request.content for request in seen)  # rewound each time

    make, seen = scripted(httpx.ReadError("reset after sending"), httpx.Response(201, json=dataset))
    with pytest.raises(APIConnectionError):
        make().datasets.upload(data)  # it may have been stored: not sent twice
    assert len(seen) == 1


def test_the_backoff_doubles_up_to_its_bound() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=4.0)
    bounds = [max(policy.backoff(retry) for _ in range(200)) for retry in (1, 2, 3, 4, 5)]
    assert [round(b) for b in bounds] == [1, 2, 4, 4, 4]
