"""`Client`: the one object a user creates; its resources are attributes."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import httpx

from client.checkpoints import Checkpoints
from client.datasets import Datasets
from client.errors import AlignError
from client.jobs import Jobs
from client.pipelines import Pipelines
from client.reward_models import RewardModels
from client.settings import ClientSettings
from client.transport import RetryPolicy, Transport


class Client:
    """A synchronous alignd client.

    with Client("http://127.0.0.1:8000", api_key="alignd_...") as alignd:
        ds = alignd.datasets.upload("pairs.jsonl", name="pairs")
        job = alignd.jobs.create(algorithm="dpo", base_model="smollm2-135m-instruct", dataset_id=ds.id)
        for event in alignd.jobs.stream_events(job.id): ...
        alignd.checkpoints.download(alignd.jobs.wait(job.id).output_checkpoint_id, extract_to="model/")
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 3,
        initial_backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        """`base_url` and `api_key` default to ALIGND_URL and ALIGND_API_KEY (client/settings.py).

        `max_retries` retries after the first try (see client/transport.py for which requests).
        """
        if base_url is None or api_key is None:
            env = ClientSettings()
            base_url = base_url or env.url
            api_key = api_key or (env.api_key.get_secret_value() if env.api_key else None)
        if not api_key:
            raise AlignError("no API key: pass api_key=... or set ALIGND_API_KEY (`alignd keys create` makes one)")
        base_url = base_url.rstrip("/").removesuffix("/v1")  # the server's root; an openai-style .../v1 works too
        retry = RetryPolicy(max_attempts=max_retries + 1, initial_backoff=initial_backoff)
        extra = {"sleep": sleep} if sleep is not None else {}
        self._transport = Transport(base_url, api_key, timeout=timeout, retry=retry, transport=transport, **extra)
        self.base_url = base_url
        self.datasets = Datasets(self._transport)
        self.reward_models = RewardModels(self._transport)
        self.jobs = Jobs(self._transport)
        self.pipelines = Pipelines(self._transport)
        self.checkpoints = Checkpoints(self._transport)

    def ready(self) -> bool:
        """Whether the server answers GET /readyz with 200 (database and broker reachable); never raises."""
        try:
            return self._transport.http.get("/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
