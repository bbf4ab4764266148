"""`client.reward_models`: create, list, get, delete, score."""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Sequence
from typing import Any

from client.pagination import iterate_pages
from client.transport import Transport
from client.types import RewardModel, Scores


class RewardModels:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def create(self, *, name: str, components: Sequence[dict[str, Any]]) -> RewardModel:
        """A weighted sum of components, e.g. `{"type": "rule", "rule": "exact_match", "weight": 1.0}`."""
        body = {"name": name, "components": list(components)}
        return RewardModel.model_validate(self._t.json("POST", "/v1/reward-models", json=body, idempotent=False))

    def list(self, *, page_size: int = 100) -> Iterator[RewardModel]:
        return iterate_pages(self._t, "/v1/reward-models", RewardModel, {"limit": page_size})

    def get(self, reward_model_id: str) -> RewardModel:
        return RewardModel.model_validate(self._t.json("GET", f"/v1/reward-models/{reward_model_id}"))

    def delete(self, reward_model_id: str) -> None:
        """ConflictError once a job refers to it."""
        self._t.request("DELETE", f"/v1/reward-models/{reward_model_id}")

    def score(
        self,
        reward_model_id: str,
        *,
        prompt: str | builtins.list[dict[str, str]],
        completions: Sequence[str],
        fields: dict[str, Any] | None = None,
    ) -> Scores:
        """Score completions of a prompt, to try a reward before paying for a job."""
        body = {"prompt": prompt, "completions": list(completions), "fields": fields or {}}
        path = f"/v1/reward-models/{reward_model_id}/score"
        return Scores.model_validate(self._t.json("POST", path, json=body, idempotent=True))
