"""The server's model directory (operator side: `alignd models add/list`, GET /v1/models).

One Hugging Face folder per model name. How a client's MODEL_REF names one of these folders (or a
hub model, or a checkpoint) is api/models_dir/references.py.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from api.core.settings import Settings
from api.models_dir.references import MODEL_NAME


@dataclass
class ServerModel:
    name: str
    bytes: int
    adapter: bool
    """A LoRA adapter folder (adapter_config.json) rather than full weights."""


def list_models(settings: Settings) -> list[ServerModel]:
    root = settings.resolved_models_dir
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and MODEL_NAME.match(p.name)):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        out.append(ServerModel(folder.name, size, (folder / "adapter_config.json").is_file()))
    return out


class ModelSourceError(ValueError):
    """`alignd models add` cannot use the given source; the message says why."""


def add_model(settings: Settings, name: str, source: Path, *, replace: bool = False) -> Path:
    """Copy a Hugging Face folder, or convert a .gguf file, into the model directory as `name`.

    The model is assembled under a temporary name and renamed into place, so a half-copied model
    is never visible to jobs.
    """
    if not MODEL_NAME.match(name):
        raise ModelSourceError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (no slashes)")
    source = source.expanduser()
    root = settings.resolved_models_dir
    target = root / name
    if target.exists() and not replace:
        raise ModelSourceError(f"model {name!r} already exists in {root}; pass --replace to overwrite it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.{uuid.uuid4().hex}.tmp"
    try:
        if source.is_file() and source.suffix == ".gguf":
            from trainer.models import convert_gguf  # torch and transformers: only when converting

            convert_gguf(source, tmp)
        elif source.is_dir():
            if not (source / "config.json").is_file() and not (source / "adapter_config.json").is_file():
                raise ModelSourceError(f"{source} has no config.json: expected a Hugging Face model folder")
            shutil.copytree(source, tmp)
        else:
            raise ModelSourceError(f"{source}: expected a Hugging Face model folder or a .gguf file")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
