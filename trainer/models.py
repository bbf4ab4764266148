"""How does a model reference become a loaded model? Tokenizers and models (HF folder, .gguf file or
hub id), the policy to train (fresh, LoRA-wrapped or resumed), the frozen reference, the precision.

Shared by every algorithm. Failures raise `ModelLoadError` with a message a user can act on.
Weights load from safetensors only (`use_safetensors=True`: a pickled pytorch_model.bin could run
code), and a model's custom code runs only when the spec sets `trust_remote_code`.
GGUF weights come back dequantized but transformers refuses to save such a model, so we rebuild a
fresh model from its config and copy the weights in: the result trains and saves like any other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from trainer.config import LoraConfig
from trainer.run import TrainError

if TYPE_CHECKING:
    from trainer.run import Run

ModelKind = Literal["causal", "seqcls"]


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer cannot be loaded; the message says what to fix."""


def _source(ref: str) -> tuple[str, dict[str, Any]]:
    """(path or id, extra from_pretrained kwargs) for a folder, a .gguf file or a hub id."""
    path = Path(ref)
    if ref.endswith(".gguf"):
        if not path.is_file():
            raise ModelLoadError(f"base model {ref!r}: GGUF file not found; give an existing .gguf file")
        return str(path.parent), {"gguf_file": path.name}
    if path.is_absolute() or ref.startswith((".", "~")) or path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"base model {ref!r}: no such folder; give a Hugging Face model folder, a .gguf file or a hub id"
            )
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"base model {ref!r}: folder has no config.json; is it a Hugging Face model folder "
                "(save_pretrained output)?"
            )
    return ref, {}


def resolve_dtype(precision: str) -> torch.dtype:
    """fp32, bf16, or auto = bf16 on a GPU that supports it, else fp32."""
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(ref: str, *, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (EOS when it has none) and right padding."""
    source, extra = _source(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the tokenizer of {ref!r}: {exc}") from exc
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {ref!r} has neither a pad nor an EOS token; add one")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def policy_tokenizer(run: Run) -> PreTrainedTokenizerBase:
    """The tokenizer of the spec's base model (custom code only when the spec trusts it)."""
    return load_tokenizer(run.spec.base_model, trust_remote_code=run.spec.trust_remote_code)


def _auto_class(kind: ModelKind) -> Any:
    return AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification


def load_model(
    ref: str,
    kind: ModelKind = "causal",
    *,
    dtype: torch.dtype = torch.float32,
    pad_token_id: int | None = None,
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load a causal LM or a 1-label sequence classifier (a fresh scalar head on any backbone)."""
    source, extra = _source(ref)
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code, **extra}
    if not extra.get("gguf_file"):
        # A GGUF file is its own single-file format, read by the gguf parser (no pickle), so it cannot
        # and need not be safetensors; it is how the real SmolLM2 model is loaded. Everything else is.
        kwargs["use_safetensors"] = True
    if kind == "seqcls":
        kwargs["num_labels"] = 1
    try:
        model = _auto_class(kind).from_pretrained(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load base model {ref!r}: {exc}. Give a Hugging Face folder, a .gguf file or a hub id"
        ) from exc
    except Exception as exc:
        raise ModelLoadError(f"cannot load base model {ref!r} as a {kind} model: {exc}") from exc
    if extra.get("gguf_file"):
        model = _rebuild_serializable(model, kind, dtype)
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        # Sequence classifiers find the last non-pad token through config.pad_token_id.
        model.config.pad_token_id = pad_token_id
    return model


def _rebuild_serializable(model: PreTrainedModel, kind: ModelKind, dtype: torch.dtype) -> PreTrainedModel:
    """Copy a GGUF-loaded model into a fresh one built from its config (which save_pretrained accepts)."""
    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        fresh = _auto_class(kind).from_config(config, dtype=dtype)
    fresh.load_state_dict(model.state_dict(), strict=False, assign=True)
    fresh.tie_weights()
    missing = [n for n, p in fresh.named_parameters() if p.is_meta]
    if missing:
        raise ModelLoadError(f"GGUF conversion left parameters unset: {missing[:5]}")
    fresh.generation_config = model.generation_config
    return fresh


def load_policy(run: Run, tokenizer: Any, kind: ModelKind = "causal") -> Any:
    """The model to train: base (or the --resume checkpoint), LoRA when asked, checkpointing when asked."""
    spec, lora = run.spec, run.spec.lora
    source = str(run.resume) if run.resume is not None and lora is None else spec.base_model
    model: Any = load_model(
        source,
        kind,
        dtype=resolve_dtype(run.config.precision),
        pad_token_id=tokenizer.pad_token_id,
        trust_remote_code=spec.trust_remote_code,
    )
    if lora is not None and run.resume is not None:
        model = _load_adapter(model, run.resume)
    elif lora is not None:
        model = apply_lora(model, lora, kind)
    if run.config.gradient_checkpointing is not False:  # true, or "auto" (switched per micro-batch: trainer.packing)
        enable_gradient_checkpointing(model)
    return model.to(run.device)


def disable_dropout(model: Any, log: Any = None) -> None:
    """Set every dropout module's rate to 0 (LoRA's included), TRL's `disable_dropout`: a zero-rate dropout
    returns its input, so it costs nothing. Logs the rates it zeroed."""
    zeroed = sorted({m.p for m in model.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0})
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if zeroed and log is not None:
        rates = ", ".join(f"{p:g}" for p in zeroed)
        log(f"disable_dropout: dropout (rates {rates}) set to 0 for training; set disable_dropout false to keep it")


def _load_adapter(model: PreTrainedModel, folder: Path) -> Any:
    """The trainable LoRA adapter of a checkpoint folder, from its safetensors file only."""
    from peft import PeftModel

    if not (folder / "adapter_model.safetensors").is_file():
        raise TrainError(
            "invalid_resume", f"{folder} has no adapter_model.safetensors: resume from a checkpoint written by alignd"
        )
    return PeftModel.from_pretrained(model, str(folder), is_trainable=True)


def load_reference(run: Run) -> Any:
    """A frozen copy of the base model, the reference policy when LoRA's adapter-free base cannot be."""
    ref: Any = load_model(
        run.spec.base_model,
        "causal",
        dtype=resolve_dtype(run.config.precision),
        trust_remote_code=run.spec.trust_remote_code,
    )
    return ref.to(run.device).eval().requires_grad_(False)


def convert_gguf(gguf_file: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> Path:
    """Write a GGUF model (dequantized) as an ordinary safetensors Hugging Face folder; return it."""
    ref = str(gguf_file)
    if not ref.endswith(".gguf"):
        raise ModelLoadError(f"{ref!r} is not a .gguf file")
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, "causal", dtype=torch.float32)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def apply_lora(model: PreTrainedModel, lora: LoraConfig, kind: ModelKind = "causal") -> Any:
    """Wrap `model` with fresh LoRA adapters (peft); the base weights are frozen."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import TaskType, get_peft_model

    task = TaskType.CAUSAL_LM if kind == "causal" else TaskType.SEQ_CLS
    config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task,
    )
    return get_peft_model(model, config)


def is_peft(model: Any) -> bool:
    """True for a peft-wrapped model (LoRA)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def enable_gradient_checkpointing(model: Any) -> None:
    """Recompute activations in backward; with LoRA the inputs must require grads for it to work."""
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if is_peft(model):
        model.enable_input_require_grads()
    model.config.use_cache = False


class SwitchableCheckpointing:
    """Turns a model's gradient checkpointing (enabled by `enable_gradient_checkpointing`, non-reentrant) on or
    off between forwards, through its decoder layers' `gradient_checkpointing` flag (transformers'
    GradientCheckpointingLayer); counts the training micro-batches it checkpointed."""

    def __init__(self, model: Any) -> None:
        from accelerate.utils import extract_model_from_parallel
        from transformers.modeling_layers import GradientCheckpointingLayer

        base = unwrap_base(extract_model_from_parallel(model))
        self.config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        self.layers: list[Any] = [m for m in base.modules() if isinstance(m, GradientCheckpointingLayer)] or [
            m
            for m in base.modules()
            if hasattr(m, "gradient_checkpointing")  # older-style modules
        ]
        self.checkpointed = 0
        self.passes = 0

    def set(self, on: bool) -> None:
        for layer in self.layers:
            layer.gradient_checkpointing = on
        self.passes += 1
        self.checkpointed += int(on)


def free_memory_bytes(run: Any) -> int:
    """Memory this process may use now: a GPU's free memory, or on CPU MemAvailable (within the cgroup's limit
    when there is one) shared equally by the processes of this machine."""
    if run.device.type == "cuda":
        return int(torch.cuda.mem_get_info(run.device)[0])
    free = _meminfo_available()
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    local = int(os.environ.get("LOCAL_WORLD_SIZE", run.accelerator.num_processes))
    return max(free, 0) // max(local, 1)


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def unwrap_base(model: Any) -> PreTrainedModel:
    """The underlying transformers model (without peft)."""
    return model.get_base_model() if is_peft(model) else model


def read_alignd_json(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The alignd.json of a checkpoint folder ({} when absent)."""
    path = Path(folder) / "alignd.json"
    return json.loads(path.read_text()) if path.is_file() else {}
