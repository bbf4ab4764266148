"""The model directory: `alignd models add/list`, GET /v1/models, and MODEL_REF checks for jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.core.settings import Settings
from api.models_dir.references import looks_like_path
from cli.main import app
from tests.api.helpers import real_lines, upload_ok


def hf_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "llama"}')
    (path / "model.safetensors").write_bytes(b"\0" * 1000)
    return path


def test_models_add_copies_a_hugging_face_folder_and_jobs_can_use_its_name(
    settings: Settings, client: TestClient, auth: dict[str, str], tmp_path: Path
) -> None:
    source = hf_folder(tmp_path / "src")
    runner = CliRunner()
    result = runner.invoke(app, ["models", "add", "tiny", str(source), "--data-dir", str(settings.data_dir)])
    assert result.exit_code == 0, result.output
    assert (settings.resolved_models_dir / "tiny" / "model.safetensors").stat().st_size == 1000
    listed = runner.invoke(app, ["models", "list", "--data-dir", str(settings.data_dir)])
    assert listed.output.startswith("tiny\tmodel\t")
    assert client.get("/v1/models", headers=auth).json() == {
        "data": [{"id": "tiny", "bytes": 1000 + len('{"model_type": "llama"}'), "adapter": False}],
        "has_more": False,
        "next_cursor": None,
    }
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 2))
    resp = client.post(
        "/v1/jobs", headers=auth, json={"algorithm": "dpo", "base_model": "tiny", "dataset_id": ds["id"]}
    )
    assert resp.status_code == 201, resp.text
    # Adding the same name again needs --replace.
    again = runner.invoke(app, ["models", "add", "tiny", str(source), "--data-dir", str(settings.data_dir)])
    assert again.exit_code == 1 and "--replace" in again.output


@pytest.mark.parametrize(
    ("name", "source"),
    [("bad/name", "src"), ("ok", "missing"), ("ok", "not-a-model")],
    ids=["slash", "missing", "no-config"],
)
def test_models_add_refuses_bad_names_and_sources(settings: Settings, tmp_path: Path, name: str, source: str) -> None:
    hf_folder(tmp_path / "src")
    (tmp_path / "not-a-model").mkdir()
    result = CliRunner().invoke(
        app, ["models", "add", name, str(tmp_path / source), "--data-dir", str(settings.data_dir)]
    )
    assert result.exit_code == 1
    assert not any(settings.resolved_models_dir.glob("*")) if settings.resolved_models_dir.exists() else True


@pytest.mark.parametrize("ref", ["/abs", "./rel", "../up", "~/home", "a/../b", "a\\b", "file:///x"])
def test_paths_are_recognised(ref: str) -> None:
    assert looks_like_path(ref)


@pytest.mark.parametrize("ref", ["tiny", "Qwen/Qwen2.5-0.5B-Instruct", "job:job_1", "checkpoint:ckpt_1", "v1.5"])
def test_references_are_not_paths(ref: str) -> None:
    assert not looks_like_path(ref)


@pytest.mark.parametrize("allow_hub", [True, False])
def test_job_create_answers_the_same_for_a_hub_id_whether_or_not_a_folder_of_that_name_is_in_the_cwd(
    client: TestClient,
    auth: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    allow_hub: bool,
) -> None:
    from api.core import reset_caches

    hf_folder(tmp_path / "cwd" / "org" / "name")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("ALIGND_ALLOW_HUB_MODELS", str(allow_hub).lower())
    reset_caches()
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 2))

    def create(ref: str) -> str:
        body = {"algorithm": "dpo", "base_model": ref, "dataset_id": ds["id"]}
        resp = client.post("/v1/jobs", headers=auth, json=body)
        assert resp.status_code == (201 if allow_hub else 422), resp.text
        return resp.text.replace(ref, "X") if not allow_hub else resp.json()["base_model"]

    existing, missing = create("org/name"), create("org/gone")
    if allow_hub:
        assert (existing, missing) == ("org/name", "org/gone")  # stored as hub ids; the worker asks the hub cache
    else:
        assert existing == missing and "hub models are disabled" in existing
