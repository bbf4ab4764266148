"""HTTP under the resources: auth header, error mapping, and the retry policy.

Retries (exponential backoff with jitter, `RetryPolicy.max_attempts` tries in all):
- requests that are safe to repeat (GET, DELETE, cancel, validate, score, and job creation, which
  carries an Idempotency-Key) are retried on any connection error and on any 5xx answer;
- the others (dataset upload, reward-model creation) only when the request cannot have been acted
  on: the connection was never made, or the server answered 502/503/504;
- a 4xx is never retried: the same request would get the same answer.
Streams (SSE, downloads) resume on their own (see jobs.stream_events and checkpoints.download).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from client.errors import APIConnectionError, APITimeoutError, error_from_response

UNAVAILABLE = frozenset({502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 4
    """Tries in all (1 = no retry)."""
    initial_backoff: float = 0.5
    """Seconds before the first retry; doubled for each next one."""
    max_backoff: float = 8.0

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based): full jitter over the exponential bound."""
        bound = min(self.max_backoff, self.initial_backoff * 2 ** (retry - 1))
        return bound * (0.5 + random.random() / 2)


def _retryable(outcome: httpx.Response | httpx.TransportError, idempotent: bool) -> bool:
    if isinstance(outcome, httpx.Response):
        return outcome.status_code >= 500 if idempotent else outcome.status_code in UNAVAILABLE
    if idempotent:
        return True
    return isinstance(outcome, httpx.ConnectError | httpx.ConnectTimeout)


def connection_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return cls(f"could not reach alignd at {url}: {exc or type(exc).__name__}")


class Transport:
    """An httpx.Client with alignd's base URL and key, retries and error mapping."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url
        self.retry = retry
        self.sleep = sleep
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "alignd-client"},
            timeout=timeout,
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        build: Callable[[], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying per the policy; returns a 2xx response or raises an AlignError.

        `build` returns extra keyword arguments afresh for each try (an upload's file is rewound).
        """
        if idempotent is None:
            idempotent = method in ("GET", "HEAD", "DELETE", "PUT")
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.http.request(method, path, **kwargs, **(build() if build else {}))
            except httpx.TransportError as exc:
                if attempt >= self.retry.max_attempts or not _retryable(exc, idempotent):
                    raise connection_error(exc, self.base_url) from exc
            else:
                if response.is_success:
                    return response
                if attempt >= self.retry.max_attempts or not _retryable(response, idempotent):
                    raise error_from_response(response)
            self.sleep(self.retry.backoff(attempt))

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """One streamed GET (no retry here: the caller resumes); an error answer raises."""
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise connection_error(exc, self.base_url) from exc
