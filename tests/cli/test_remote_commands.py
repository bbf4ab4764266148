"""`alignd datasets|jobs|checkpoints ...` against a live server (Postgres + Redis, and the embedded
default; tests/live.py), in process through typer's CliRunner: they talk HTTP through the client."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from tests.live import LiveServer
from tests.worker.conftest import short_preference_pairs

HP = ["--hp", "max_steps=6", "--hp", "batch_size=2", "--hp", "save_every=3"]


def alignd(server: LiveServer, *args: str, key: str | None = None) -> Result:
    env = {"ALIGND_URL": server.url, "ALIGND_API_KEY": key or server.key, "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def dataset_id(live_alignd: LiveServer, tmp_path: Path) -> str:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(short_preference_pairs(32))
    return str(json.loads(ok(alignd(live_alignd, "datasets", "upload", str(path), "--json")).stdout)["id"])


def test_datasets_upload_prints_the_dataset_and_list_shows_it(live_alignd: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(short_preference_pairs(32))

    text = ok(alignd(live_alignd, "datasets", "upload", str(path), "--name", "my-pairs")).stdout
    uploaded = json.loads(ok(alignd(live_alignd, "datasets", "upload", str(path), "--name", "again", "--json")).stdout)

    assert text.startswith("uploaded ds_") and "my-pairs" in text and "32 rows, kind preference" in text
    assert uploaded["rows"] == 32 and uploaded["name"] == "again"
    listed = json.loads(ok(alignd(live_alignd, "datasets", "list", "--json", "--limit", "2")).stdout)
    assert [d["name"] for d in listed] == ["again", "my-pairs"]
    assert uploaded["id"] in ok(alignd(live_alignd, "datasets", "list")).stdout


def test_an_invalid_upload_prints_each_bad_line_in_a_table_and_exits_1(live_alignd: LiveServer, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"})
    path.write_text(f"{good}\n{good}\nnot json\n{json.dumps({'prompt': 'p', 'chosen': ''})}\n")

    result = alignd(live_alignd, "datasets", "upload", str(path))

    assert result.exit_code == 1
    assert "invalid_dataset" in result.stderr and "line" in result.stderr and "message" in result.stderr
    rows = [line for line in result.stderr.splitlines() if line.strip().startswith(("│ 3 ", "│ 4 "))]
    assert len(rows) == 2, result.stderr


def test_jobs_create_from_flags_or_a_yaml_file_then_list_and_get(
    live_alignd: LiveServer, dataset_id: str, tmp_path: Path
) -> None:
    from_flags = json.loads(
        ok(
            alignd(
                live_alignd,
                "jobs",
                "create",
                "--algorithm",
                "dpo",
                "--base-model",
                live_alignd.model,
                "--dataset",
                dataset_id,
                *HP,
                "--hp",
                "learning_rate=1e-4",
                "--hp",
                "lr_scheduler=cosine",
                "--lora-r",
                "8",
                "--lora-alpha",
                "16",
                "--name",
                "flags",
                "--metadata",
                "team=nlp",
                "--json",
            )
        ).stdout
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        f"algorithm: dpo\nbase_model: {live_alignd.model}\ndataset_id: {dataset_id}\nname: from-file\n"
        "hyperparameters:\n  max_steps: 2\n  beta: 0.2\n"
    )
    from_file = ok(alignd(live_alignd, "jobs", "create", "--file", str(job_file), "--hp", "batch_size=2")).stdout

    hp = from_flags["hyperparameters"]
    assert (hp["max_steps"], hp["learning_rate"], hp["lr_scheduler"]) == (6, 1e-4, "cosine")
    assert from_flags["lora"]["r"] == 8 and from_flags["metadata"] == {"team": "nlp"}
    file_job_id = from_file.split()[1]
    got = json.loads(ok(alignd(live_alignd, "jobs", "get", file_job_id, "--json")).stdout)
    assert got["name"] == "from-file" and got["hyperparameters"]["beta"] == 0.2
    assert got["hyperparameters"]["batch_size"] == 2
    listed = json.loads(ok(alignd(live_alignd, "jobs", "list", "--json", "--limit", "2")).stdout)
    assert [j["id"] for j in listed] == [file_job_id, from_flags["id"]]
    assert file_job_id in ok(alignd(live_alignd, "jobs", "list", "--algorithm", "dpo")).stdout
    assert "from-file" in ok(alignd(live_alignd, "jobs", "get", file_job_id)).stdout
    missing = alignd(live_alignd, "jobs", "create", "--algorithm", "dpo")
    assert missing.exit_code != 0 and "--base-model" in missing.output


def test_jobs_watch_follows_to_the_end_and_exits_0_succeeded_1_failed_2_cancelled(
    live_alignd: LiveServer, dataset_id: str
) -> None:
    def create(model: str, *hp: str) -> str:
        args = ["jobs", "create", "--algorithm", "dpo", "--base-model", model, "--dataset", dataset_id, *hp, "--json"]
        return str(json.loads(ok(alignd(live_alignd, *args)).stdout)["id"])

    succeeded = alignd(live_alignd, "jobs", "watch", create(live_alignd.model, *HP))
    assert succeeded.exit_code == 0, succeeded.output
    assert "status -> succeeded" in succeeded.stderr and "6/6" in succeeded.stderr and "loss" in succeeded.stderr
    assert "succeeded at step 6" in succeeded.stdout and "alignd checkpoints download ckpt_" in succeeded.stdout

    failed = alignd(live_alignd, "jobs", "watch", create(live_alignd.failing_model or "", *HP), "--json")
    assert failed.exit_code == 1 and json.loads(failed.stdout)["status"] == "failed"

    running = create(live_alignd.model, "--hp", "max_steps=100000", "--hp", "batch_size=2")
    assert ok(alignd(live_alignd, "jobs", "cancel", running)).stdout.split()[1] in ("cancelling", "cancelled")
    cancelled = alignd(live_alignd, "jobs", "watch", running)
    assert cancelled.exit_code == 2 and f"{running} cancelled" in cancelled.stdout


def test_jobs_pause_and_resume_print_the_new_status(live_alignd: LiveServer, dataset_id: str) -> None:
    args = ["jobs", "create", "--algorithm", "dpo", "--base-model", live_alignd.model, "--dataset", dataset_id]
    job_id = str(json.loads(ok(alignd(live_alignd, *args, "--hp", "max_steps=100000", "--json")).stdout)["id"])
    ok(alignd(live_alignd, "jobs", "cancel", job_id))  # settles it before the pause (a cancelled job cannot pause)
    refused = alignd(live_alignd, "jobs", "pause", job_id)
    assert refused.exit_code != 0 and "job_not_pausable" in refused.output

    job_id = str(json.loads(ok(alignd(live_alignd, *args, "--hp", "max_steps=100000", "--json")).stdout)["id"])
    assert ok(alignd(live_alignd, "jobs", "pause", job_id)).stdout.split()[1] in ("paused", "pausing")
    deadline = time.monotonic() + 60
    while (status := json.loads(ok(alignd(live_alignd, "jobs", "get", job_id, "--json")).stdout)["status"]) != "paused":
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    resumed = json.loads(ok(alignd(live_alignd, "jobs", "resume", job_id, "--json")).stdout)
    assert resumed["id"] == job_id and resumed["status"] in ("queued", "running")
    ok(alignd(live_alignd, "jobs", "cancel", job_id))


def test_checkpoints_list_and_download_with_extract(live_alignd: LiveServer, dataset_id: str, tmp_path: Path) -> None:
    job_id = json.loads(
        ok(
            alignd(
                live_alignd,
                "jobs",
                "create",
                "--algorithm",
                "dpo",
                "--base-model",
                live_alignd.model,
                "--dataset",
                dataset_id,
                *HP,
                "--json",
            )
        ).stdout
    )["id"]
    ok(alignd(live_alignd, "jobs", "watch", job_id))
    checkpoints = json.loads(ok(alignd(live_alignd, "checkpoints", "list", job_id, "--json")).stdout)
    final = checkpoints[-1]
    assert [c["step"] for c in checkpoints] == [3, 6] and final["id"] in ok(
        alignd(live_alignd, "checkpoints", "list", job_id)
    ).stdout

    out = tmp_path / "final.tar"
    result = ok(
        alignd(
            live_alignd, "checkpoints", "download", final["id"], "--output", str(out), "--extract", str(tmp_path / "m")
        )
    )

    assert f"sha256 {final['sha256']} verified" in result.stdout
    assert out.stat().st_size == final["bytes"] and (tmp_path / "m" / "config.json").is_file()
    as_json = json.loads(
        ok(
            alignd(live_alignd, "checkpoints", "download", final["id"], "-o", str(tmp_path / "again.tar"), "--json")
        ).stdout
    )
    assert as_json["sha256"] == final["sha256"] and as_json["extracted_to"] is None


def test_a_wrong_key_or_a_missing_one_is_an_error_message_and_exit_1(live_alignd: LiveServer) -> None:
    wrong = alignd(live_alignd, "jobs", "list", key="alignd_wrong")
    assert wrong.exit_code == 1 and "401" in wrong.stderr
    no_key = CliRunner().invoke(app, ["jobs", "list", "--url", live_alignd.url], env={"ALIGND_API_KEY": ""})
    assert no_key.exit_code == 1 and "ALIGND_API_KEY" in no_key.stderr
