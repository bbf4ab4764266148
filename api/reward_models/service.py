"""Reward-model specs: weighted model/rule components, validated on creation, scored on demand."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.core.errors import Conflict, NotFound
from api.core.pagination import fetch_page
from api.core.settings import Settings
from api.jobs.models import Job
from api.jobs.service import check_components, parse_components
from api.models_dir import references
from api.reward_models import scoring
from api.reward_models.models import RewardModel
from api.reward_models.schemas import RewardModelCreate, ScoreRequest
from api.reward_models.scoring import Scores, ScoreTask
from trainer.config import ModelComponent


class RewardModelNotFound(NotFound):
    pass


class RewardModelInUse(Conflict):
    code = "reward_model_in_use"


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
    return fetch_page(session, RewardModel, tenant_id, query, after, limit)


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


async def score(
    session: Session, settings: Settings, tenant_id: str, reward_model_id: str, body: ScoreRequest
) -> Scores:
    """Score completions of one prompt with the spec, exactly as a grpo/ppo job would, in a child process."""
    task = await run_in_threadpool(_score_task, session, settings, tenant_id, reward_model_id, body)
    return await scoring.score(task, settings)


def _score_task(
    session: Session, settings: Settings, tenant_id: str, reward_model_id: str, body: ScoreRequest
) -> ScoreTask:
    """What the scoring process needs: the spec's components, each model reference checked for this tenant."""
    try:
        row = get_reward_model(session, tenant_id, reward_model_id)
        components = parse_components(row.components, "components")
        sources = {
            i: references.check(session, settings, tenant_id, c.model, f"components[{i}].model")
            for i, c in enumerate(components)
            if isinstance(c, ModelComponent)
        }
    finally:
        session.close()  # scoring takes a while; hold no connection meanwhile
    return ScoreTask(components, sources, body.prompt, body.completions, body.fields)
