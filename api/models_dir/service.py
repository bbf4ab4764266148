"""The server's model directory and MODEL_REF validation (DESIGN §4).

A MODEL_REF is one of:
- a name in the model directory (`ALIGND_MODELS_DIR`, one Hugging Face folder per name),
- a hub id `org/name` (when the operator allows hub models; the worker downloads it),
- `job:<id>`: the output checkpoint of a succeeded job of the same tenant,
- `checkpoint:<id>`: a checkpoint of the same tenant.
Server paths are never accepted from clients. The API checks a reference when a job or reward
model is created; the worker turns it into a local folder when the job runs (worker/references.py).
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.errors import InvalidRequest
from api.core.settings import Settings
from api.jobs.models import Job

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class InvalidModelRef(InvalidRequest):
    code = "invalid_model"


@dataclass
class ResolvedModel:
    ref: str
    kind: Literal["local", "hub", "job", "checkpoint"]
    checkpoint_id: str | None = None
    path: Path | None = None
    """Folder in the model directory (kind local)."""


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~", "\\")) or ".." in ref or "\\" in ref or ref.startswith("file:")


def resolve_model_ref(session: Session, settings: Settings, tenant_id: str, ref: str, param: str) -> ResolvedModel:
    """Check that `ref` names a model this tenant may use; raises InvalidModelRef (422) naming `param`."""
    ref = ref.strip()
    if not ref:
        raise InvalidModelRef(
            "give a model: a name from GET /v1/models, a hub id, job:<id> or checkpoint:<id>", param=param
        )
    if looks_like_path(ref):
        raise InvalidModelRef(
            f"{ref!r} looks like a file path; server paths are not accepted. Use a model name from GET /v1/models "
            "(the operator adds models with `alignd models add`), a hub id, job:<id> or checkpoint:<id>",
            param=param,
        )
    kind, sep, ident = ref.partition(":")
    if sep and kind == "job":
        job = session.get(Job, ident)
        if job is None or job.tenant_id != tenant_id:
            raise InvalidModelRef(f"{ref!r}: no job {ident!r}", param=param)
        if job.status != "succeeded" or job.output_checkpoint_id is None:
            raise InvalidModelRef(
                f"{ref!r}: job {ident} is {job.status} and has no output checkpoint; use a succeeded job", param=param
            )
        return ResolvedModel(ref, "job", checkpoint_id=job.output_checkpoint_id)
    if sep and kind == "checkpoint":
        checkpoint = session.get(Checkpoint, ident)
        if checkpoint is None or checkpoint.tenant_id != tenant_id:
            raise InvalidModelRef(f"{ref!r}: no checkpoint {ident!r}", param=param)
        return ResolvedModel(ref, "checkpoint", checkpoint_id=checkpoint.id)
    if sep:
        raise InvalidModelRef(f"{ref!r}: unknown reference kind {kind!r}; use job:<id> or checkpoint:<id>", param=param)
    if MODEL_NAME.match(ref):
        folder = settings.resolved_models_dir / ref
        if folder.is_dir():
            return ResolvedModel(ref, "local", path=folder)
        raise InvalidModelRef(
            f"unknown model {ref!r}: not in this server's model directory (see GET /v1/models; the operator adds "
            f"models with `alignd models add {ref} SOURCE`)",
            param=param,
        )
    if HUB_ID.match(ref):
        if not settings.allow_hub_models:
            raise InvalidModelRef(
                f"{ref!r}: hub models are disabled on this server; use a model from GET /v1/models", param=param
            )
        return ResolvedModel(ref, "hub")
    raise InvalidModelRef(
        f"{ref!r} is not a model reference: use a model name, a hub id (org/name), job:<id> or checkpoint:<id>",
        param=param,
    )


# ---- the model directory (operator side: `alignd models add/list`, GET /v1/models) ----------------


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
