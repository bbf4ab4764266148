"""Turning a job row into a trainer spec: every reference becomes a local path (DESIGN §7).

- datasets: downloaded from the artifact store into the attempt folder (`<attempt>/data/`);
- a MODEL_REF (base_model, reward model components): an absolute folder, by the one grammar the API
  checked it with (api/models_dir/references.py): a model-directory folder, a hub id's snapshot in
  the hub cache, or a checkpoint extracted into the checkpoint cache (reused by later jobs). The
  trainer never sees a hub id, so it never looks for one as a folder in its working directory;
- on a resumed attempt: the job's latest checkpoint that has training state, extracted into the
  attempt's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.settings import Settings
from api.core.storage import Storage
from api.datasets.models import Dataset
from api.jobs.models import Job
from api.models_dir import references
from api.reward_models.models import RewardModel
from trainer.config import TrainSpec


class UnresolvedReference(Exception):
    """A reference of the job cannot be resolved; the message says which and what to do."""


def build_spec(session: Session, job: Job, settings: Settings, storage: Storage, workdir: Path) -> TrainSpec:
    """The SPEC.json of `job`, with local paths only (datasets downloaded into `workdir`/data)."""
    train = _dataset(session, job, job.dataset_id)
    base_model = resolve_model(session, job, job.base_model, settings, storage)
    spec: dict[str, Any] = {
        "algorithm": job.algorithm,
        "base_model": base_model,
        "train_file": str(_download(storage, train, workdir)),
        "hyperparameters": job.hyperparameters,
        "lora": job.lora,
        "seed": job.seed,
        "dataset_sha256": {"train": train.sha256},
        "job_id": job.id,
        "trust_remote_code": settings.trust_remote_code,
    }
    if job.eval_dataset_id:
        evaluation = _dataset(session, job, job.eval_dataset_id)
        spec["eval_file"] = str(_download(storage, evaluation, workdir))
        spec["dataset_sha256"]["eval"] = evaluation.sha256
    if job.algorithm == "evaluate":  # every scored model, labelled with its MODEL_REF, the base model first
        candidates = [(ref, resolve_model(session, job, ref, settings, storage)) for ref in job.models or []]
        spec["models"] = [{"name": ref, "path": path} for ref, path in [(job.base_model, base_model), *candidates]]
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
    """A MODEL_REF of `job` as an absolute local folder, checked again for the job's tenant."""
    try:
        source = references.check(session, settings, job.tenant_id, ref)
        return str(references.local_folder(source, settings, storage))
    except references.InvalidModelRef as exc:
        raise UnresolvedReference(f"model {ref!r}: {exc.message}") from exc


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


def _reward_components(session: Session, job: Job) -> list[dict[str, Any]]:
    if job.reward_model_id:
        reward_model = session.get(RewardModel, job.reward_model_id)
        if reward_model is None or reward_model.tenant_id != job.tenant_id:
            raise UnresolvedReference(f"reward model {job.reward_model_id} no longer exists")
        return list(reward_model.components)
    return list(job.reward or [])
