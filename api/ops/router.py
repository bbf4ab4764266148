"""Operations: liveness, readiness and Prometheus metrics (no API key: for load balancers and scrapers)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from api.deps import SessionDep
from api.ops import service
from api.ops.metrics import exposition

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or broker unreachable"}})
def readyz(session: SessionDep) -> JSONResponse:
    """Database and broker are reachable."""
    checks = service.readiness(session)
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ready", **checks})
    down = ", ".join(k for k, v in checks.items() if v != "ok")
    error = {"code": "not_ready", "message": f"unreachable: {down}", "param": None, "details": [checks]}
    return JSONResponse({"error": error}, status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_PLAIN_0_0_4: {}}}})
def metrics(session: SessionDep) -> Response:
    """Prometheus metrics, text format 0.0.4 (every Prometheus reads it); api/ops/metrics.py lists them."""
    return Response(exposition(session), media_type=CONTENT_TYPE_PLAIN_0_0_4)
