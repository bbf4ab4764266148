"""MODEL_REF: what a model reference may say, and how it becomes a local folder (DESIGN §4).

A MODEL_REF is exactly one of:
- a name in the server's model directory (`ALIGND_MODELS_DIR`, one Hugging Face folder per name);
- a hub id `org/name` (unless `ALIGND_ALLOW_HUB_MODELS=false`);
- `job:<id>`: the output checkpoint of a succeeded job of the same tenant;
- `checkpoint:<id>`: a checkpoint of the same tenant.

Three steps, used by the API (job and reward-model create), the score endpoint and the worker:
`parse` reads the grammar (no disk, no database); `check` decides whether this tenant may use the
reference (the API's 422s) and returns a `Source`, which needs no database; `local_folder` turns a
Source into an absolute folder to load from.

What a model reference may reach, and nothing else:
- a folder directly inside the model directory, by its name (no separators, no `..`);
- the hub, or the hub cache (`ALIGND_HUB_CACHE_DIR`), through huggingface_hub's `snapshot_download`:
  a hub id is never a path, so a folder named `org/name` in a process's working directory is never
  read, and whether one exists changes no answer;
- the archive of a checkpoint of the same tenant in the artifact store, extracted into the checkpoint
  cache (api/checkpoints/archive.py).
Client-supplied server paths are refused; only safetensors, configs and tokenizer files are fetched
from the hub (and Python files only when `ALIGND_TRUST_REMOTE_CODE` is on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from api.checkpoints.archive import cached_checkpoint
from api.checkpoints.models import Checkpoint
from api.core.errors import InvalidRequest
from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.models import Job

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"]
"""What is fetched of a hub model: configs, safetensors weights and tokenizer files (never pickles)."""
ANY_REF = "a name from GET /v1/models, a hub id (org/name), job:<id> or checkpoint:<id>"


class InvalidModelRef(InvalidRequest):
    code = "invalid_model"


@dataclass(frozen=True)
class ModelName:
    name: str


@dataclass(frozen=True)
class HubId:
    repo_id: str


@dataclass(frozen=True)
class JobOutput:
    job_id: str


@dataclass(frozen=True)
class CheckpointId:
    checkpoint_id: str


ModelRef = ModelName | HubId | JobOutput | CheckpointId


@dataclass(frozen=True)
class Source:
    """A checked reference: where its weights come from. Plain data, so it can cross a process."""

    kind: Literal["models_dir", "hub", "checkpoint"]
    name: str
    """The model name, the hub repo id, or the checkpoint id."""
    storage_key: str | None = None
    """The checkpoint's archive in the artifact store (kind checkpoint)."""


def looks_like_path(ref: str) -> bool:
    return ref.startswith(("/", ".", "~", "\\")) or ".." in ref or "\\" in ref or ref.startswith("file:")


def parse(ref: str, param: str | None = None) -> ModelRef:
    """The kind of reference `ref` is, by its grammar alone (raises InvalidModelRef naming `param`)."""
    ref = ref.strip()
    if not ref:
        raise InvalidModelRef(f"give a model: {ANY_REF}", param=param)
    if looks_like_path(ref):
        raise InvalidModelRef(
            f"{ref!r} looks like a file path; server paths are not accepted. Use {ANY_REF} "
            "(the operator adds models with `alignd models add`)",
            param=param,
        )
    kind, sep, ident = ref.partition(":")
    if sep:
        if kind == "job" and ident:
            return JobOutput(ident)
        if kind == "checkpoint" and ident:
            return CheckpointId(ident)
        raise InvalidModelRef(f"{ref!r}: unknown reference kind {kind!r}; use job:<id> or checkpoint:<id>", param=param)
    if MODEL_NAME.match(ref):
        return ModelName(ref)
    if HUB_ID.match(ref):
        return HubId(ref)
    raise InvalidModelRef(f"{ref!r} is not a model reference: use {ANY_REF}", param=param)


def check(session: Session, settings: Settings, tenant_id: str, ref: str, param: str | None = None) -> Source:
    """Whether this tenant may use `ref`, and where it reads from (raises InvalidModelRef naming `param`).

    Looks at the model directory, the tenant's jobs and checkpoints, and the hub setting; never at
    the hub itself, nor at any other folder.
    """
    parsed = parse(ref, param)
    match parsed:
        case ModelName(name):
            if not (settings.resolved_models_dir / name).is_dir():
                raise InvalidModelRef(
                    f"unknown model {name!r}: not in the server's model directory (see GET /v1/models; the "
                    f"operator adds models with `alignd models add {name} SOURCE`)",
                    param=param,
                )
            return Source("models_dir", name)
        case HubId(repo_id):
            _hub_allowed(settings, repo_id, param)
            return Source("hub", repo_id)
        case JobOutput(job_id):
            job = session.get(Job, job_id)
            if job is None or job.tenant_id != tenant_id:
                raise InvalidModelRef(f"'job:{job_id}': no job {job_id!r}", param=param)
            if job.status != "succeeded" or job.output_checkpoint_id is None:
                raise InvalidModelRef(
                    f"'job:{job_id}': job {job_id} is {job.status} and has no output checkpoint; use a succeeded job",
                    param=param,
                )
            return _checkpoint(session, tenant_id, job.output_checkpoint_id, f"job:{job_id}", param)
        case CheckpointId(checkpoint_id):
            return _checkpoint(session, tenant_id, checkpoint_id, f"checkpoint:{checkpoint_id}", param)


def local_folder(source: Source, settings: Settings, storage: Storage, param: str | None = None) -> Path:
    """The absolute local folder of a checked reference: fetched from the hub or extracted on first use.

    Raises InvalidModelRef when it cannot be had (a model removed from the directory since, the hub
    unreachable and the model not in its cache).
    """
    if source.kind == "models_dir":
        folder = settings.resolved_models_dir / source.name
        if not folder.is_dir():
            raise InvalidModelRef(f"model {source.name!r} is no longer in the server's model directory", param=param)
        return folder
    if source.kind == "checkpoint":
        assert source.storage_key is not None
        return cached_checkpoint(source.name, source.storage_key, settings, storage)
    _hub_allowed(settings, source.name, param)
    return hub_snapshot(source.name, settings, param)


def load_tokenizer(source: Source, settings: Settings, storage: Storage, param: str) -> Any:
    """The tokenizer of a checked reference (in a forked child: it imports transformers). Raises InvalidModelRef
    when the model or its tokenizer cannot be had; the message names the reference, never the server's path."""
    from trainer.models import ModelLoadError
    from trainer.models import load_tokenizer as load

    folder = local_folder(source, settings, storage, param=param)
    try:
        return load(str(folder), trust_remote_code=settings.trust_remote_code)
    except ModelLoadError as exc:
        raise InvalidModelRef(str(exc).replace(str(folder), source.name), param=param) from exc


def hub_snapshot(repo_id: str, settings: Settings, param: str | None = None) -> Path:
    """The hub model's snapshot folder in the hub cache, downloaded when missing (the hub id is never a path)."""
    from huggingface_hub import snapshot_download

    patterns = [*HUB_FILES, "*.py"] if settings.trust_remote_code else HUB_FILES
    try:
        folder = snapshot_download(repo_id, cache_dir=settings.hub_cache_dir, allow_patterns=patterns)
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "not available"
        raise InvalidModelRef(
            f"hub model {repo_id!r} is neither reachable on the hub nor in this server's hub cache "
            f"({type(exc).__name__}); check the id, or ask the operator to add the model to the model directory",
            param=param,
        ) from exc
    return Path(str(folder)).resolve()


def _hub_allowed(settings: Settings, repo_id: str, param: str | None) -> None:
    if not settings.allow_hub_models:
        raise InvalidModelRef(
            f"{repo_id!r}: hub models are disabled on this server; use a model from GET /v1/models", param=param
        )


def _checkpoint(session: Session, tenant_id: str, checkpoint_id: str, ref: str, param: str | None) -> Source:
    checkpoint = session.get(Checkpoint, checkpoint_id)
    if checkpoint is None or checkpoint.tenant_id != tenant_id:
        raise InvalidModelRef(f"{ref!r}: no such checkpoint {checkpoint_id!r}", param=param)
    return Source("checkpoint", checkpoint.id, checkpoint.storage_key)
