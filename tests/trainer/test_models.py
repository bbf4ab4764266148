"""Where models load: safetensors only, and a model's custom code runs only when the spec trusts it."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.tiny import build_tiny_model
from tests.trainer.conftest import Result
from trainer.config import ModelComponent
from trainer.models import ModelLoadError, load_model
from trainer.rewards import RewardError, build_reward

CUSTOM_CODE = """
from transformers import LlamaConfig, LlamaForCausalLM


class TinyCustomConfig(LlamaConfig):
    model_type = "tiny-custom"


class TinyCustomForCausalLM(LlamaForCausalLM):
    config_class = TinyCustomConfig
"""


def pickled_copy(model: Path, folder: Path) -> Path:
    """`model` with its weights in a pickled pytorch_model.bin instead of model.safetensors."""
    shutil.copytree(model, folder)
    (folder / "model.safetensors").unlink()
    torch.save(load_file(str(model / "model.safetensors")), folder / "pytorch_model.bin")
    return folder


def custom_code_copy(model: Path, folder: Path) -> Path:
    """`model` declared as a custom-code model (config auto_map -> a module in the folder)."""
    shutil.copytree(model, folder)
    (folder / "tiny_custom.py").write_text(CUSTOM_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "tiny-custom"
    config["auto_map"] = {
        "AutoConfig": "tiny_custom.TinyCustomConfig",
        "AutoModelForCausalLM": "tiny_custom.TinyCustomForCausalLM",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_base_model_weights_in_a_pickle_are_refused(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """A pytorch_model.bin could run code when unpickled: weights load from safetensors only."""
    model = pickled_copy(tiny_model, tmp_path / "pickled")
    spec = {"algorithm": "sft", "base_model": str(model), "train_file": str(data_dir / "sft.jsonl")}
    result = run_inprocess(spec)
    assert result.code == 1
    assert result.events[-1]["code"] == "model_load_failed"
    assert "model.safetensors" in result.events[-1]["message"]


def test_reward_model_weights_in_a_pickle_are_refused(tmp_path: Path) -> None:
    reward_model = build_tiny_model(tmp_path / "rm", kind="seqcls")
    pickled = pickled_copy(reward_model, tmp_path / "pickled-rm")
    assert build_reward([ModelComponent(model=str(reward_model))]).names == ["model"]
    with pytest.raises(RewardError, match="safetensors"):
        build_reward([ModelComponent(model=str(pickled))])


def test_custom_code_runs_only_when_trusted(tiny_model: Path, tmp_path: Path) -> None:
    model = custom_code_copy(tiny_model, tmp_path / "custom")
    with pytest.raises(ModelLoadError, match="trust_remote_code"):
        load_model(str(model))
    assert type(load_model(str(model), trust_remote_code=True)).__name__ == "TinyCustomForCausalLM"


def test_a_spec_that_trusts_remote_code_trains_a_custom_code_model(
    run_inprocess: Callable[..., Result], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    model = custom_code_copy(tiny_model, tmp_path / "custom")
    spec: dict[str, Any] = {
        "algorithm": "sft",
        "base_model": str(model),
        "train_file": str(data_dir / "sft.jsonl"),
        "hyperparameters": {"batch_size": 2, "max_steps": 1, "max_length": 64, "max_prompt_length": 32},
    }
    refused = run_inprocess(spec, output="refused")
    assert refused.code == 1 and refused.events[-1]["code"] == "model_load_failed"
    assert "trust_remote_code" in refused.events[-1]["message"]
    trusted = run_inprocess({**spec, "trust_remote_code": True}, output="trusted")
    assert trusted.code == 0, trusted.events[-1]
    assert (trusted.output / "final" / "model.safetensors").is_file()


def test_reward_models_load_with_safetensors_and_the_specs_trust_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reward_model = build_tiny_model(tmp_path / "rm", kind="seqcls")
    calls: list[tuple[str, dict[str, Any]]] = []
    for cls in (AutoModelForSequenceClassification, AutoTokenizer):
        original = cls.from_pretrained

        def spy(*args: Any, _original: Any = original, _name: str = cls.__name__, **kwargs: Any) -> Any:
            calls.append((_name, kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    build_reward([ModelComponent(model=str(reward_model))], trust_remote_code=True)
    assert {name for name, _ in calls} == {"AutoModelForSequenceClassification", "AutoTokenizer"}
    assert all(kwargs["trust_remote_code"] is True for _, kwargs in calls)
    assert all(kwargs["use_safetensors"] is True for name, kwargs in calls if name != "AutoTokenizer")


def test_disable_dropout_zeroes_every_dropout_lora_s_included_and_says_so(tiny_model: Path) -> None:
    from trainer.config import DPOConfig, LoraConfig, RewardConfig, SFTConfig
    from trainer.models import apply_lora, disable_dropout

    assert DPOConfig().disable_dropout and RewardConfig().disable_dropout  # TRL's default for both
    assert "disable_dropout" not in SFTConfig.model_fields
    model = apply_lora(load_model(str(tiny_model)), LoraConfig(r=4, alpha=8, dropout=0.3)).train()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.1)  # a fresh B is zero: make the adapter (and its dropout) matter
    ids = torch.arange(3, 20).unsqueeze(0)
    with torch.no_grad():
        assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout on
    logged: list[str] = []
    disable_dropout(model, logged.append)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
    assert logged and "0.3" in logged[0]
