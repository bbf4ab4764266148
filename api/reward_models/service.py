"""Reward-model specs: weighted model/rule components, validated on creation, scored on demand."""

from __future__ import annotations

import shutil
import tarfile
import uuid
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.checkpoints.models import Checkpoint
from api.core.errors import AlignError, Conflict, InvalidRequest, NotFound
from api.core.pagination import page_query
from api.core.settings import Settings
from api.core.storage import Storage
from api.jobs.models import Job
from api.jobs.service import check_components, parse_components
from api.models_dir.service import ResolvedModel, resolve_model_ref
from api.reward_models.models import RewardModel
from api.reward_models.schemas import RewardModelCreate, ScoreRequest
from trainer.config import ModelComponent


class RewardModelNotFound(NotFound):
    pass


class RewardModelInUse(Conflict):
    code = "reward_model_in_use"


class ScoringUnavailable(AlignError):
    status_code = 501
    code = "not_implemented"


class ScoringFailed(InvalidRequest):
    code = "reward_failed"


def create_reward_model(session: Session, settings: Settings, tenant_id: str, body: RewardModelCreate) -> RewardModel:
    check_components(session, settings, tenant_id, body.components, "components")
    row = RewardModel(
        tenant_id=tenant_id,
        name=body.name,
        components=[c.model_dump(mode="json", exclude_none=True) for c in body.components],
    )
    session.add(row)
    session.commit()
    return row


def get_reward_model(session: Session, tenant_id: str, reward_model_id: str) -> RewardModel:
    row = session.get(RewardModel, reward_model_id)
    if row is None or row.tenant_id != tenant_id:
        raise RewardModelNotFound(f"no reward model {reward_model_id!r}", param="reward_model_id")
    return row


def list_reward_models(
    session: Session, tenant_id: str, *, limit: int, after: str | None
) -> tuple[list[RewardModel], bool]:
    query = select(RewardModel).where(RewardModel.tenant_id == tenant_id)
    items = list(session.scalars(page_query(session, RewardModel, tenant_id, query, after, limit)))
    return items[:limit], len(items) > limit


def delete_reward_model(session: Session, tenant_id: str, reward_model_id: str) -> None:
    """Delete a spec no job refers to (jobs keep their reference; 409 otherwise)."""
    row = get_reward_model(session, tenant_id, reward_model_id)
    user = session.scalars(select(Job.id).where(Job.reward_model_id == row.id).limit(1)).first()
    if user is not None:
        session.rollback()
        raise RewardModelInUse(
            f"reward model {reward_model_id} is used by job {user} (jobs keep their reward spec); it cannot be deleted"
        )
    session.delete(row)
    session.commit()


def score(
    session: Session,
    settings: Settings,
    storage: Storage,
    tenant_id: str,
    reward_model_id: str,
    body: ScoreRequest,
) -> tuple[list[float], dict[str, list[float]]]:
    """Score completions of one prompt with the spec, exactly as a grpo/ppo job would."""
    row = get_reward_model(session, tenant_id, reward_model_id)
    components = parse_components(row.components, "components")
    local = []
    for i, component in enumerate(components):
        if isinstance(component, ModelComponent):
            resolved = resolve_model_ref(session, settings, tenant_id, component.model, f"components[{i}].model")
            component = component.model_copy(update={"model": _local_model(session, settings, storage, resolved)})
        local.append(component)
    session.close()  # loading models takes a while; hold no connection meanwhile
    try:
        from trainer.rewards import RewardError, build_reward
    except ImportError as exc:
        raise ScoringUnavailable(
            f"scoring needs the trainer's reward functions, which are not installed: {exc}"
        ) from exc
    n = len(body.completions)
    try:
        reward = build_reward(local, device="cpu")
        total, per_component = reward([body.prompt] * n, body.completions, [body.fields] * n)
    except RewardError as exc:
        raise ScoringFailed(str(exc), param="components") from exc
    return total.tolist(), {name: values.tolist() for name, values in per_component.items()}


def _local_model(session: Session, settings: Settings, storage: Storage, resolved: ResolvedModel) -> str:
    if resolved.kind == "local":
        assert resolved.path is not None
        return str(resolved.path)
    if resolved.kind == "hub":
        return resolved.ref
    checkpoint = session.get(Checkpoint, resolved.checkpoint_id)
    assert checkpoint is not None
    return str(_extracted(settings, storage, checkpoint))


def _extracted(settings: Settings, storage: Storage, checkpoint: Checkpoint) -> Path:
    """The checkpoint's folder, extracted once into <data dir>/cache/checkpoints/<id>."""
    target = settings.data_dir.resolve() / "cache" / "checkpoints" / checkpoint.id
    if target.is_dir():
        return target
    tmp = target.with_name(f".{checkpoint.id}.{uuid.uuid4().hex}")
    tmp.mkdir(parents=True)
    with storage.open(checkpoint.storage_key) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
        tar.extractall(tmp, filter="data")
    try:
        tmp.rename(target)
    except OSError:  # extracted meanwhile by another request
        shutil.rmtree(tmp, ignore_errors=True)
    return target
