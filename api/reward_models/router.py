"""/v1/reward-models: reward specs for grpo/ppo, and scoring completions with one before a job."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.core.pagination import AfterQuery, LimitQuery, Page, page_of
from api.deps import SessionDep, SettingsDep, TenantDep
from api.reward_models import service
from api.reward_models.schemas import RewardModelCreate, RewardModelPublic, ScoreRequest, ScoreResponse

router = APIRouter(prefix="/reward-models", tags=["reward models"])


@router.post("", status_code=201)
def create_reward_model(
    body: RewardModelCreate, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> RewardModelPublic:
    """Create a reward-model spec."""
    return RewardModelPublic.model_validate(service.create_reward_model(session, settings, tenant.id, body))


@router.get("")
def list_reward_models(
    session: SessionDep, tenant: TenantDep, limit: LimitQuery = 20, after: AfterQuery = None
) -> Page[RewardModelPublic]:
    """List reward-model specs, newest first."""
    items, has_more = service.list_reward_models(session, tenant.id, limit=limit, after=after)
    return page_of(items, has_more, RewardModelPublic.model_validate)


@router.get("/{reward_model_id}")
def get_reward_model(reward_model_id: str, session: SessionDep, tenant: TenantDep) -> RewardModelPublic:
    """Get a reward-model spec."""
    return RewardModelPublic.model_validate(service.get_reward_model(session, tenant.id, reward_model_id))


@router.delete("/{reward_model_id}", status_code=204, responses={409: {"description": "a job refers to it"}})
def delete_reward_model(reward_model_id: str, session: SessionDep, tenant: TenantDep) -> Response:
    """Delete a reward-model spec."""
    service.delete_reward_model(session, tenant.id, reward_model_id)
    return Response(status_code=204)


@router.post(
    "/{reward_model_id}/score",
    responses={
        503: {"description": "`scoring_busy`: the server's scoring slots are all in use; retry after Retry-After."},
        504: {"description": "`score_timeout`: scoring ran past ALIGND_SCORE_TIMEOUT_SECONDS and was stopped."},
    },
)
async def score(
    reward_model_id: str, body: ScoreRequest, session: SessionDep, settings: SettingsDep, tenant: TenantDep
) -> ScoreResponse:
    """Score completions with a reward-model spec."""
    scores, components = await service.score(session, settings, tenant.id, reward_model_id, body)
    return ScoreResponse(scores=scores, components=components)
