"""/v1/plan: memory and time of a training run before it is submitted (docs/plan.md)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from api.deps import SessionDep, SettingsDep, TenantDep
from api.plan import lengths, service
from api.plan.schemas import PlanRequest, PlanResponse

router = APIRouter(
    prefix="/plan",
    tags=["plan"],
    responses={
        404: {"description": "`not_found`: `dataset_id` names no dataset of this tenant."},
        503: {"description": "`plan_busy`: measuring a dataset's lengths needs a child slot; all are in use."},
        504: {"description": "`plan_timeout`: measuring the dataset's lengths ran past ALIGND_SCORE_TIMEOUT_SECONDS."},
    },
)


@router.post("")
async def create_plan(body: PlanRequest, settings: SettingsDep, tenant: TenantDep, session: SessionDep) -> PlanResponse:
    """Plan algorithms on a base model and hardware: models in memory, bytes, fit, step time, a recommendation.

    With `dataset_id`, at the token lengths of that dataset's rows (measured once per dataset and model)."""
    measured = None
    if body.dataset_id is not None:
        measured = await lengths.dataset_lengths(session, settings, tenant.id, body.dataset_id, body.base_model)
    return await run_in_threadpool(service.plan, settings, body, None, measured)
