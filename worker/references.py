"""Turning a job row into a trainer spec: every reference becomes a local path (DESIGN §7).

- datasets: downloaded from the artifact store into the attempt folder (`<attempt>/data/`);
- a MODEL_REF (base_model, reward model components): a name in the server's model directory -> that
  folder; `job:<id>` (its output checkpoint) or `checkpoint:<id>` -> the checkpoint's archive
  extracted into the worker's cache (`<work_dir>/cache/checkpoints/<id>/`, reused by later jobs);
  anything else is a hub id and is passed through for from_pretrained to resolve;
- on a resumed attempt: the job's latest checkpoint that has training state, extracted into the
  attempt's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.core.storage import Storage
from api.datasets.models import Dataset
from api.jobs.models import Job
from api.reward_models.models import RewardModel
from trainer.config import TrainSpec
from worker.archive import extract_archive

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class UnresolvedReference(Exception):
    """A reference of the job cannot be resolved; the message says which and what to do."""


def build_spec(session: Session, job: Job, settings: Settings, storage: Storage, workdir: Path) -> TrainSpec:
    """The SPEC.json of `job`, with local paths only (datasets downloaded into `workdir`/data)."""
    train = _dataset(session, job, job.dataset_id)
    spec: dict[str, Any] = {
        "algorithm": job.algorithm,
        "base_model": resolve_model(session, job, job.base_model, settings, storage),
        "train_file": str(_download(storage, train, workdir)),
        "hyperparameters": job.hyperparameters,
        "lora": job.lora,
        "seed": job.seed,
        "dataset_sha256": {"train": train.sha256},
        "job_id": job.id,
    }
    if job.eval_dataset_id:
        evaluation = _dataset(session, job, job.eval_dataset_id)
        spec["eval_file"] = str(_download(storage, evaluation, workdir))
        spec["dataset_sha256"]["eval"] = evaluation.sha256
    components = _reward_components(session, job)
    if components:
        spec["reward"] = [_resolve_component(session, job, c, settings, storage) for c in components]
    return TrainSpec.model_validate(spec)


def _download(storage: Storage, dataset: Dataset, workdir: Path) -> Path:
    return storage.download_to(dataset.storage_key, workdir / "data" / Path(dataset.storage_key).name)


def _resolve_component(
    session: Session, job: Job, component: dict[str, Any], settings: Settings, storage: Storage
) -> dict[str, Any]:
    if component.get("type") != "model":
        return component
    return {**component, "model": resolve_model(session, job, component["model"], settings, storage)}


def resolve_model(session: Session, job: Job, ref: str, settings: Settings, storage: Storage) -> str:
    """A MODEL_REF as a local folder (or a hub id, passed through)."""
    kind, _, ident = ref.partition(":")
    if kind in ("job", "checkpoint") and ident:
        checkpoint = _referenced_checkpoint(session, job, kind, ident)
        return str(cached_checkpoint(checkpoint, settings, storage))
    if _MODEL_NAME.match(ref) and (settings.resolved_models_dir / ref).is_dir():
        return str(settings.resolved_models_dir / ref)
    if "/" in ref and not ref.startswith(("/", ".")) and ".." not in ref:
        if not settings.allow_hub_models:
            raise UnresolvedReference(f"base model {ref!r}: hub models are disabled on this server (allow_hub_models)")
        return ref
    raise UnresolvedReference(
        f"model {ref!r} is not in the server's model directory; add it with `alignd models add {ref} SOURCE`"
    )


def cached_checkpoint(checkpoint: Checkpoint, settings: Settings, storage: Storage) -> Path:
    """The checkpoint's folder in the worker cache, extracted from the store on first use."""
    target = settings.resolved_work_dir / "cache" / "checkpoints" / checkpoint.id
    if target.is_dir():
        return target
    try:
        with storage.open(checkpoint.storage_key) as archive:
            return extract_archive(archive, target)
    except OSError:
        if target.is_dir():  # another job extracted it at the same time
            return target
        raise


def latest_resumable_checkpoint(session: Session, job: Job) -> Checkpoint | None:
    """The job's most recent intermediate checkpoint (those carry training_state/)."""
    return session.scalars(
        select(Checkpoint)
        .where(Checkpoint.job_id == job.id, Checkpoint.kind == "intermediate")
        .order_by(Checkpoint.step.desc())
        .limit(1)
    ).first()


def _dataset(session: Session, job: Job, dataset_id: str) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.tenant_id != job.tenant_id or dataset.deleted_at is not None:
        raise UnresolvedReference(f"dataset {dataset_id} no longer exists; upload it again and resubmit the job")
    return dataset


def _referenced_checkpoint(session: Session, job: Job, kind: str, ident: str) -> Checkpoint:
    checkpoint: Checkpoint | None
    if kind == "job":
        source = session.get(Job, ident)
        if source is None or source.tenant_id != job.tenant_id or source.output_checkpoint_id is None:
            raise UnresolvedReference(f"model 'job:{ident}': that job has no output checkpoint (has it succeeded?)")
        checkpoint = session.get(Checkpoint, source.output_checkpoint_id)
    else:
        checkpoint = session.get(Checkpoint, ident)
    if checkpoint is None or checkpoint.tenant_id != job.tenant_id:
        raise UnresolvedReference(f"model '{kind}:{ident}': no such checkpoint")
    return checkpoint


def _reward_components(session: Session, job: Job) -> list[dict[str, Any]]:
    if job.reward_model_id:
        reward_model = session.get(RewardModel, job.reward_model_id)
        if reward_model is None or reward_model.tenant_id != job.tenant_id:
            raise UnresolvedReference(f"reward model {job.reward_model_id} no longer exists")
        return list(reward_model.components)
    return list(job.reward or [])
