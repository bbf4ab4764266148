"""GET /v1/datasets/{id}/preview: rows rendered as the trainer renders them, with a model's chat template.

The model is a byte-level tokenizer (tests/tiny.py): one token per byte, one per special token, so token
counts can be written down by hand. Rendering runs in the forked child that scoring uses; the first
request of a test process starts its forkserver (imports torch), later ones fork at once.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.core.storage import get_storage
from api.jobs.models import Job
from tests.api.helpers import assert_error, upload_ok
from tests.api.test_scoring import Server, server  # noqa: F401  (the real-server fixture)
from tests.conftest import TenantKey
from tests.tiny import build_tiny_tokenizer

CHAT = "chat"
"""A model-directory model whose tokenizer has tests/tiny.py's ChatML template."""

CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello"}],
        "rejected": [{"role": "assistant", "content": "Go away, please"}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
    },
]


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def tokenizer_folder(folder: Path, template: str | None = None) -> Path:
    build_tiny_tokenizer(folder)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    if template is not None:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = template
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
        (folder / "chat_template.jinja").unlink(missing_ok=True)
    return folder


@pytest.fixture
def chat_model(settings: Settings) -> str:
    tokenizer_folder(settings.resolved_models_dir / CHAT)
    return CHAT


def preview(client: TestClient, auth: dict[str, str], dataset: str, **params: Any) -> Any:
    return client.get(f"/v1/datasets/{dataset}/preview", headers=auth, params=params)


def test_conversational_rows_go_through_the_models_chat_template_with_token_counts(
    client: TestClient, auth: dict[str, str], chat_model: str
) -> None:
    dataset = upload_ok(client, auth, jsonl(CONVERSATIONAL))["id"]
    resp = preview(client, auth, dataset, model=chat_model)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["model"], body["max_length"], body["max_prompt_length"]) == (CHAT, 1024, 512)
    assert body["offset"] == 0 and body["has_more"] is False
    first, second = body["data"]
    assert first["prompt"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert first["chosen"] == "Hello<|im_end|>\n"
    assert first["rejected"] == "Go away, please<|im_end|>\n"
    assert first["templated"] is True
    # One token per byte and per special token; the template's <|im_end|> is the EOS, so none is added.
    assert first["tokens"] == {"prompt": 1 + 7 + 1 + 1 + 1 + 10, "chosen": 5 + 1 + 1, "rejected": 15 + 1 + 1}
    assert first["total_tokens"] == 21 + 17
    assert first["prompt_truncated"] is False and first["completion_truncated"] is False
    assert second["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?")
    assert second["chosen"] == "4<|im_end|>\n" and second["completion"] is None


def test_truncation_flags_follow_the_trainers_policy_for_the_limits_given(
    client: TestClient, auth: dict[str, str], chat_model: str
) -> None:
    dataset = upload_ok(client, auth, jsonl(CONVERSATIONAL[:1]))["id"]

    def flags(max_length: int, max_prompt_length: int) -> tuple[bool, bool]:
        resp = preview(
            client, auth, dataset, model=chat_model, max_length=max_length, max_prompt_length=max_prompt_length
        )
        assert resp.status_code == 200, resp.text
        row = resp.json()["data"][0]
        return row["prompt_truncated"], row["completion_truncated"]

    # prompt 21 tokens, chosen 7, rejected 17.
    assert flags(38, 21) == (False, False)
    assert flags(37, 21) == (False, True)  # the rejected completion loses its last token
    assert flags(37, 20) == (True, False)  # the prompt cut to 20 leaves room for 17
    assert flags(36, 20) == (True, True)


def test_plain_string_rows_and_sft_rows_are_rendered_as_they_are(
    client: TestClient, auth: dict[str, str], chat_model: str
) -> None:
    pairs = upload_ok(client, auth, jsonl([{"prompt": "Q: 1+1?", "chosen": " 2", "rejected": " 3"}]))["id"]
    row = preview(client, auth, pairs, model=chat_model).json()["data"][0]
    assert (row["prompt"], row["chosen"], row["rejected"], row["templated"]) == ("Q: 1+1?", " 2", " 3", False)
    assert row["tokens"] == {"prompt": 7, "chosen": 3, "rejected": 3}  # EOS appended to each completion

    chats = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}]
    sft = upload_ok(client, auth, jsonl(chats))["id"]
    row = preview(client, auth, sft, model=chat_model).json()["data"][0]
    assert row["prompt"].endswith("<|im_start|>assistant\n") and row["completion"] == "Yo<|im_end|>\n"
    assert row["templated"] is True and row["tokens"]["completion"] == 4

    prompts = upload_ok(client, auth, jsonl([{"prompt": [{"role": "user", "content": "Hi"}], "answer": "x"}]))["id"]
    row = preview(client, auth, prompts, model=chat_model).json()["data"][0]
    assert row["prompt"] == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert row["tokens"] == {"prompt": 21} and row["completion_truncated"] is False


def test_a_model_without_a_chat_template_gets_the_trainers_plain_role_lines(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    tokenizer_folder(settings.resolved_models_dir / "plain", template="")
    dataset = upload_ok(client, auth, jsonl(CONVERSATIONAL[:1]))["id"]
    resp = preview(client, auth, dataset, model="plain")
    assert resp.status_code == 200, resp.text
    row = resp.json()["data"][0]
    assert (row["prompt"], row["chosen"], row["templated"]) == ("user: Hi\nassistant: ", "Hello", False)


def test_a_checkpoint_of_the_tenant_renders_and_another_tenants_is_refused_like_an_unknown_one(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    other_tenant: TenantKey,
    session: Session,
    tmp_path: Path,
) -> None:
    folder = tokenizer_folder(tmp_path / "ckpt")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    theirs = upload_ok(client, other_auth, jsonl(CONVERSATIONAL))["id"]
    job = Job(tenant_id=other_tenant.id, algorithm="dpo", base_model="m", dataset_id=theirs, hyperparameters={})
    session.add(job)
    session.flush()
    key = f"checkpoints/{job.id}/final.tar"
    stored = get_storage().put_stream(key, io.BytesIO(archive.getvalue()))
    row = Checkpoint(
        tenant_id=other_tenant.id, job_id=job.id, step=1, kind="final", bytes=stored.bytes, sha256=stored.sha256,
        storage_key=key, metrics=None,
    )  # fmt: skip
    session.add(row)
    session.commit()

    own = preview(client, other_auth, theirs, model=f"checkpoint:{row.id}")
    assert own.status_code == 200, own.text
    assert own.json()["data"][0]["templated"] is True

    mine = upload_ok(client, auth, jsonl(CONVERSATIONAL))["id"]
    refused = assert_error(preview(client, auth, mine, model=f"checkpoint:{row.id}"), 422, "invalid_model", "model")
    unknown = assert_error(preview(client, auth, mine, model="checkpoint:ckpt_nope"), 422, "invalid_model", "model")
    assert refused["message"].replace(row.id, "X") == unknown["message"].replace("ckpt_nope", "X")
    assert_error(preview(client, auth, theirs, model=f"checkpoint:{row.id}"), 404, "not_found")


def test_bad_model_references_and_limits_are_422s(
    client: TestClient, auth: dict[str, str], chat_model: str, settings: Settings
) -> None:
    dataset = upload_ok(client, auth, jsonl(CONVERSATIONAL))["id"]
    assert (
        "server paths" in assert_error(preview(client, auth, dataset, model="../chat"), 422, "invalid_model")["message"]
    )
    assert_error(preview(client, auth, dataset, model="/etc"), 422, "invalid_model", "model")
    assert_error(preview(client, auth, dataset, model="no-such-model"), 422, "invalid_model", "model")
    assert_error(preview(client, auth, dataset), 422)
    assert_error(preview(client, auth, dataset, model=chat_model, max_length=64, max_prompt_length=64), 422)
    assert_error(preview(client, auth, dataset, model=chat_model, limit=0), 422)
    # A folder in the model directory without a tokenizer: the trainer could not load it either.
    (settings.resolved_models_dir / "empty").mkdir()
    (settings.resolved_models_dir / "empty" / "config.json").write_text("{}")
    broken = assert_error(preview(client, auth, dataset, model="empty"), 422, "invalid_model", "model")
    assert str(settings.resolved_models_dir) not in broken["message"]


def test_unknown_dataset_is_404(client: TestClient, auth: dict[str, str], chat_model: str) -> None:
    assert_error(preview(client, auth, "ds_nope", model=chat_model), 404, "not_found")


def _renderers() -> list[int]:
    """Children of this test process's forkserver: the forked renderers still alive."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    servers = {
        pid
        for pid, parent in parents.items()
        if parent == os.getpid() and b"forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    }
    return [pid for pid, parent in parents.items() if parent in servers]


def test_a_chat_template_that_never_ends_is_stopped_at_the_deadline_with_a_504(
    chat_model: str, settings: Settings, auth: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core import reset_caches
    from api.main import create_app

    # Nested loops within the Jinja sandbox's range limit: 10^10 iterations per row, never done in time.
    endless = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    tokenizer_folder(settings.resolved_models_dir / "endless", template=endless)
    monkeypatch.setenv("ALIGND_SCORE_TIMEOUT_SECONDS", "3")
    reset_caches()
    with TestClient(create_app()) as client:
        dataset = upload_ok(client, auth, jsonl(CONVERSATIONAL))["id"]
        assert preview(client, auth, dataset, model=chat_model).status_code == 200  # warm: forkserver started
        start = time.monotonic()
        resp = preview(client, auth, dataset, model="endless")
        seconds = time.monotonic() - start
        error = assert_error(resp, 504, "preview_timeout")
        assert "ALIGND_SCORE_TIMEOUT_SECONDS" in error["message"]
        assert seconds < 15, seconds
        assert not _renderers(), "the rendering process outlived its deadline"
        assert preview(client, auth, dataset, model=chat_model).status_code == 200  # its slot is free again


def test_an_answer_larger_than_a_pipe_buffer_comes_back_whole_from_a_real_server(
    server: Server,  # noqa: F811
    tenant: TenantKey,
    chat_model: str,
) -> None:
    # uvicorn's loop (uvloop) leaves the pipe non-blocking: a 1.2 MB answer arrives in many pieces.
    client = server()
    long = [
        {
            "prompt": [{"role": "user", "content": f"{i} " + "tell me more " * 2000}],
            "chosen": [{"role": "assistant", "content": "yes " * 6000}],
            "rejected": [{"role": "assistant", "content": "no " * 6000}],
        }
        for i in range(20)
    ]
    dataset = client.post("/v1/datasets", headers=tenant.headers, files={"file": ("long.jsonl", jsonl(long))})
    assert dataset.status_code == 201, dataset.text
    resp = client.get(
        f"/v1/datasets/{dataset.json()['id']}/preview",
        headers=tenant.headers,
        params={"model": chat_model, "limit": 20, "max_length": 65536, "max_prompt_length": 32768},
    )
    assert resp.status_code == 200, resp.text
    rows = resp.json()["data"]
    assert len(rows) == 20 and rows[19]["prompt"].startswith("<|im_start|>user\n19 tell me more")
    assert rows[19]["tokens"]["chosen"] == len("yes " * 6000) + 2
