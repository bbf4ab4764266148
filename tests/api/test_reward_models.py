"""Reward-model specs: validated on creation, listed, deleted, and scored with the trainer's rewards."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.settings import Settings
from api.reward_models.models import RewardModel
from tests.api.helpers import assert_error, real_lines, upload_ok

GSM8K_RULES = [
    {"type": "rule", "rule": "exact_match", "weight": 1.0, "name": "correct"},
    {"type": "rule", "rule": "regex", "pattern": r"####\s*-?\d", "weight": 0.5, "name": "has_answer"},
]


def count(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(RewardModel)) or 0


def test_create_get_list_delete(client: TestClient, auth: dict[str, str], session: Session) -> None:
    resp = client.post("/v1/reward-models", headers=auth, json={"name": "gsm8k", "components": GSM8K_RULES})
    assert resp.status_code == 201, resp.text
    rm = resp.json()
    assert rm["name"] == "gsm8k" and [c["name"] for c in rm["components"]] == ["correct", "has_answer"]
    assert client.get(f"/v1/reward-models/{rm['id']}", headers=auth).json() == rm
    assert [r["id"] for r in client.get("/v1/reward-models", headers=auth).json()["data"]] == [rm["id"]]
    assert client.delete(f"/v1/reward-models/{rm['id']}", headers=auth).status_code == 204
    assert_error(client.get(f"/v1/reward-models/{rm['id']}", headers=auth), 404)
    assert count(session) == 0


@pytest.mark.parametrize(
    ("components", "param"),
    [
        ([{"type": "rule", "rule": "regex", "pattern": "(unclosed"}], "components[0].rule.pattern"),
        ([{"type": "rule", "rule": "exact_match", "weight": "inf"}], "components[0].rule.weight"),
        ([{"type": "rule", "rule": "telepathy"}], "components[0].rule.rule"),
        ([{"type": "model", "model": "/srv/models/rm"}], "components[0].model"),
        ([{"type": "model", "model": "../rm"}], "components[0].model"),
        ([{"type": "model", "model": "no-such-model"}], "components[0].model"),
        ([], "components"),
    ],
)
def test_invalid_components_are_422_naming_the_field_and_store_nothing(
    client: TestClient, auth: dict[str, str], session: Session, components: list[Any], param: str
) -> None:
    resp = client.post("/v1/reward-models", headers=auth, json={"name": "bad", "components": components})
    assert_error(resp, 422, param=param)
    assert count(session) == 0


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)b", r"(?<!x)y", r"a++", r"(?>a)"])
def test_regex_constructs_re2_lacks_are_422_saying_re2_syntax_is_required(
    client: TestClient, auth: dict[str, str], session: Session, pattern: str
) -> None:
    for rule in ("regex", "format"):
        components = [{"type": "rule", "rule": rule, "pattern": pattern}]
        resp = client.post("/v1/reward-models", headers=auth, json={"name": "bad", "components": components})
        error = assert_error(resp, 422, param="components[0].rule.pattern")
        assert "RE2 syntax is required" in error["message"] and "linear" in error["message"], error
    assert count(session) == 0


def test_a_pattern_that_backtracks_in_python_is_accepted_and_scores_at_once(
    client: TestClient, auth: dict[str, str]
) -> None:
    components = [
        {"type": "rule", "rule": "regex", "pattern": "(a+)+$", "name": "search"},
        {"type": "rule", "rule": "format", "pattern": "(x+x+)+y", "name": "whole"},
    ]
    rm = client.post("/v1/reward-models", headers=auth, json={"name": "hostile", "components": components})
    assert rm.status_code == 201, rm.text
    body = {"prompt": "p", "completions": ["a" * 28 + "!", "x" * 5000, "xxy"]}
    start = time.monotonic()
    resp = client.post(f"/v1/reward-models/{rm.json()['id']}/score", headers=auth, json=body)
    assert resp.status_code == 200, resp.text
    assert resp.json()["components"] == {"search": [0.0, 0.0, 0.0], "whole": [0.0, 0.0, 1.0]}
    assert time.monotonic() - start < 30  # Python's re would take longer than the age of the universe


def test_model_component_from_the_model_directory_is_accepted(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    (settings.resolved_models_dir / "minilm-rm").mkdir(parents=True)
    body = {"name": "rm", "components": [{"type": "model", "model": "minilm-rm", "weight": 2}]}
    assert client.post("/v1/reward-models", headers=auth, json=body).status_code == 201


def test_score_runs_the_rules_on_real_gsm8k_answers(client: TestClient, auth: dict[str, str]) -> None:
    row = json.loads(real_lines("gsm8k-train.jsonl", 1))
    final = row["answer"].rsplit("####", 1)[1].strip()
    rm = client.post("/v1/reward-models", headers=auth, json={"name": "gsm8k", "components": GSM8K_RULES}).json()
    body = {
        "prompt": row["question"],
        "completions": [row["answer"], f"The answer is {int(final) + 1}.", "I don't know."],
        "fields": {"answer": row["answer"]},
    }
    resp = client.post(f"/v1/reward-models/{rm['id']}/score", headers=auth, json=body)
    assert resp.status_code == 200, resp.text
    scores = resp.json()
    assert scores["components"] == {"correct": [1.0, 0.0, 0.0], "has_answer": [1.0, 0.0, 0.0]}
    assert scores["scores"] == [1.5, 0.0, 0.0]


def test_score_with_a_missing_column_is_422_from_the_reward(client: TestClient, auth: dict[str, str]) -> None:
    rm = client.post("/v1/reward-models", headers=auth, json={"name": "g", "components": GSM8K_RULES[:1]}).json()
    body = {"prompt": "2+2?", "completions": ["4"], "fields": {}}
    error = assert_error(client.post(f"/v1/reward-models/{rm['id']}/score", headers=auth, json=body), 422)
    assert "answer" in error["message"]


def test_reward_model_used_by_a_job_cannot_be_deleted(
    client: TestClient, auth: dict[str, str], settings: Settings
) -> None:
    (settings.resolved_models_dir / "base").mkdir(parents=True)
    ds = upload_ok(client, auth, real_lines("gsm8k-train.jsonl", 4))
    rm = client.post("/v1/reward-models", headers=auth, json={"name": "g", "components": GSM8K_RULES}).json()
    job = {"algorithm": "grpo", "base_model": "base", "dataset_id": ds["id"], "reward_model_id": rm["id"]}
    assert client.post("/v1/jobs", headers=auth, json=job).status_code == 201
    assert_error(client.delete(f"/v1/reward-models/{rm['id']}", headers=auth), 409, "reward_model_in_use")


@pytest.mark.slow  # loads torch and a (tiny) model: ~20 s on 2 busy cores
def test_score_with_a_model_component_from_a_checkpoint_of_this_tenant(
    client: TestClient, auth: dict[str, str], tenant: Any, session: Session, tmp_path: Any
) -> None:
    import io
    import math
    import tarfile

    from api.checkpoints.models import Checkpoint
    from api.core.storage import get_storage
    from api.jobs.models import Job
    from tests.tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "rm", kind="seqcls")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    ds = upload_ok(client, auth, real_lines("orca-dpo-pairs.openai-dpo.jsonl", 2))
    job = Job(tenant_id=tenant.id, algorithm="reward", base_model="m", dataset_id=ds["id"], hyperparameters={})
    session.add(job)
    session.flush()
    stored = get_storage().put_stream(f"checkpoints/{job.id}/final.tar", io.BytesIO(buf.getvalue()))
    ckpt = Checkpoint(
        tenant_id=tenant.id,
        job_id=job.id,
        step=1,
        kind="final",
        bytes=stored.bytes,
        sha256=stored.sha256,
        storage_key=stored.key,
    )
    session.add(ckpt)
    session.flush()
    job.status, job.output_checkpoint_id = "succeeded", ckpt.id
    session.commit()

    components = [{"type": "model", "model": f"job:{job.id}", "name": "rm"}, {"type": "rule", "rule": "contains"}]
    rm = client.post("/v1/reward-models", headers=auth, json={"name": "mixed", "components": components})
    assert rm.status_code == 201, rm.text
    body = {"prompt": "What is 2+2?", "completions": ["4", "five"], "fields": {"answer": "4"}}
    resp = client.post(f"/v1/reward-models/{rm.json()['id']}/score", headers=auth, json=body)
    assert resp.status_code == 200, resp.text
    scores = resp.json()
    assert scores["components"]["contains"] == [1.0, 0.0]
    assert all(math.isfinite(v) for v in scores["components"]["rm"])
    expected = [m + c for m, c in zip(scores["components"]["rm"], scores["components"]["contains"], strict=True)]
    assert scores["scores"] == pytest.approx(expected)
