"""/v1/models: the server's model directory (names usable as base_model)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from api.core.pagination import Page
from api.deps import SettingsDep, TenantDep
from api.models_dir import service

router = APIRouter(prefix="/models", tags=["models"])


class ModelPublic(BaseModel):
    id: str
    """Use as base_model (or a reward component's model)."""
    bytes: int
    adapter: bool


@router.get("")
def list_models(settings: SettingsDep, tenant: TenantDep) -> Page[ModelPublic]:
    """List the server's models."""
    models = [ModelPublic(id=m.name, bytes=m.bytes, adapter=m.adapter) for m in service.list_models(settings)]
    return Page(data=models, has_more=False)
