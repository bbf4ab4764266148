"""/v1/plan: memory and time of a training run before it is submitted (docs/plan.md)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import SettingsDep, TenantDep
from api.plan import service
from api.plan.schemas import PlanRequest, PlanResponse

router = APIRouter(prefix="/plan", tags=["plan"])


@router.post("")
def create_plan(body: PlanRequest, settings: SettingsDep, tenant: TenantDep) -> PlanResponse:
    """Plan algorithms on a base model and hardware: models in memory, bytes, fit, step time, a recommendation."""
    return service.plan(settings, body)
