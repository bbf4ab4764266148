"""Fixtures shared by the API tests: a model in the server's model directory and two uploaded datasets."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.core.settings import Settings
from tests.api.helpers import MODEL, real_lines, upload_ok


@pytest.fixture
def model(settings: Settings) -> str:
    """A model in the server's model directory (only its folder matters to the API)."""
    folder = settings.resolved_models_dir / MODEL
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return MODEL


@pytest.fixture
def pairs(client: TestClient, auth: dict[str, str]) -> str:
    return upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 20), "orca.jsonl")["id"]


@pytest.fixture
def prompts(client: TestClient, auth: dict[str, str]) -> str:
    return upload_ok(client, auth, real_lines("gsm8k-train.jsonl", 20), "gsm8k.jsonl")["id"]


@pytest.fixture
def sft_rows(client: TestClient, auth: dict[str, str]) -> str:
    return upload_ok(client, auth, real_lines("alpaca-en-demo.jsonl", 20), "alpaca.jsonl")["id"]
