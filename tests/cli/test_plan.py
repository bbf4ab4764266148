"""`alignd plan`: the planner on the command line (a rich table, or the API's JSON with --json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from tests.api.test_plan import LLAMA_8B, QWEN_05B


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory whose model directory holds two models (config.json only)."""
    data = tmp_path / "data"
    for name, config in (("qwen-0.5b", QWEN_05B), ("llama-8b", LLAMA_8B)):
        (data / "models" / name).mkdir(parents=True)
        (data / "models" / name / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("ALIGND_DATA_DIR", str(data))  # restored after the test (the CLI writes it)
    monkeypatch.delenv("ALIGND_MODELS_DIR", raising=False)
    monkeypatch.setenv("ALIGND_HUB_CACHE_DIR", str(tmp_path / "hub-cache"))
    return data


def alignd(data_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(app, ["plan", *args, "--data-dir", str(data_dir)])


def test_plan_prints_a_table_with_every_algorithm_and_a_recommendation(data_dir: Path) -> None:
    result = alignd(
        data_dir,
        "qwen-0.5b",
        "-a",
        "dpo",
        "-a",
        "grpo",
        "-a",
        "ppo",
        "--gpu",
        "L4",
        "--lora-r",
        "16",
        "--data",
        "verifiable_rules",
    )
    assert result.exit_code == 0, result.output
    for word in ("dpo", "grpo", "ppo", "peak GiB", "fits", "recommendation: grpo on 1 x L4 with micro_batch_size 2"):
        assert word in result.output, word
    assert "reference: the base with adapters disabled" in result.output


def test_plan_json_is_the_apis_answer(data_dir: Path) -> None:
    result = alignd(data_dir, "llama-8b", "-a", "sft", "--gpu", "A100-40GB", "--precision", "fp32", "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["plans"][0]["fits"] is False and answer["plans"][0]["largest_micro_batch_size"] is None
    assert answer["recommendation"]["algorithm"] is None


def test_plan_checkpoints_as_a_job_would_unless_told(data_dir: Path) -> None:
    def plans(*flags: str) -> dict[str, Any]:
        result = alignd(data_dir, "llama-8b", "-a", "sft", "-a", "grpo", "--gpu", "H100", "--json", *flags)
        assert result.exit_code == 0, result.output
        return {p["algorithm"]: p["gradient_checkpointing"] for p in json.loads(result.output)["plans"]}

    assert plans() == {"sft": True, "grpo": False}
    assert plans("--no-gradient-checkpointing") == {"sft": False, "grpo": False}
    assert plans("--gradient-checkpointing") == {"sft": True, "grpo": True}


def test_plan_reads_a_local_folder_and_plans_a_cpu(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(QWEN_05B))
    result = alignd(data_dir, str(folder), "-a", "sft", "--cpu-memory-gb", "8", "--cpu-flops", "1e11", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["hardware"]["kind"] == "cpu"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model", "-a", "dpo", "--gpu", "H100"], "unknown model"),
        (["qwen-0.5b", "-a", "dpo", "--gpu", "V100"], "hardware.gpu"),
        (["qwen-0.5b", "-a", "rlhf", "--gpu", "H100"], "algorithms[0]"),
        (["qwen-0.5b", "-a", "dpo"], "hardware"),
    ],
)
def test_plan_says_what_is_wrong(data_dir: Path, args: list[str], message: str) -> None:
    result = alignd(data_dir, *args)
    assert result.exit_code != 0
    assert message in result.output


def test_plan_of_a_stored_dataset_uses_its_token_lengths_for_its_owner_only(
    client: Any, auth: dict[str, str], settings: Any
) -> None:
    from tests.api.helpers import upload_ok
    from tests.api.test_plan_lengths import MODEL, pairs
    from tests.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(settings.resolved_models_dir / MODEL)
    (settings.resolved_models_dir / MODEL / "config.json").write_text(json.dumps(QWEN_05B))
    dataset = upload_ok(client, auth, pairs([10, 30], 40))["id"]
    args = ["plan", MODEL, "-a", "dpo", "--gpu", "H100", "--dataset", dataset]
    result = CliRunner().invoke(app, [*args, "--tenant", "acme", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["dataset"]["id"] == dataset and answer["dataset"]["prompt_tokens"]["max"] == 30
    table = CliRunner().invoke(app, [*args, "--tenant", "acme"])
    assert table.exit_code == 0, table.output
    assert f"dataset {dataset}: 2 of 2 rows tokenised" in table.output
    assert "prompt: 10/30/30/30 tokens" in table.output
    other = CliRunner().invoke(app, [*args, "--tenant", "nobody"])
    assert other.exit_code == 1 and "no tenant 'nobody'" in other.output
    assert CliRunner().invoke(app, args).exit_code == 1  # whose dataset? --tenant is required
