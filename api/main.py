"""The FastAPI application: routers, and one place that renders every error as DESIGN §4's JSON."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import api
from api.checkpoints.router import router as checkpoints_router
from api.core.errors import AlignError, ErrorResponse
from api.core.limits import RequestLimits
from api.core.settings import get_settings
from api.core.validation import error_details
from api.datasets.router import router as datasets_router
from api.jobs.router import router as jobs_router
from api.models_dir.router import router as models_router
from api.ops.router import router as ops_router
from api.plan.router import router as plan_router
from api.reward_models.router import router as reward_models_router

log = logging.getLogger("alignd.api")

_HTTP_CODES = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _error(status: int, code: str, message: str, param: str | None = None, details: list | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "param": param, "details": details or []}}
    return JSONResponse(body, status_code=status)


async def _align_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AlignError)
    return JSONResponse(exc.to_json(), status_code=exc.status_code, headers=exc.headers or None)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # loc starts with where the value came from (body/query/path/header); the field is the rest.
    errors = list(exc.errors())
    broken = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if broken is not None:
        where = broken["loc"][-1] if len(broken.get("loc", ())) > 1 else "?"
        reason = (broken.get("ctx") or {}).get("error", "JSON decode error")
        return _error(400, "invalid_json", f"the request body is not valid JSON: {reason} (at character {where})")
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") == "missing" for e in errors):
        return _error(422, "invalid_request", "a JSON request body is required", "body")
    details = []
    for e in errors:
        loc = list(e.get("loc", ()))
        source = loc[0] if loc and loc[0] in ("body", "query", "path", "header", "cookie") else None
        details.extend(error_details([{**e, "loc": loc[1:] if source else loc}]))
    first = details[0] if details else {"field": None, "message": "invalid request"}
    field = first["field"]
    message = f"{field}: {first['message']}" if field else str(first["message"])
    return _error(422, "invalid_request", message, field, details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        # FastAPI's JSON parse of the body hit Python's recursion limit (thousands of nested [ or {).
        return _error(400, "invalid_json", "the request body is not valid JSON here: it nests too deeply")
    return _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal_error", "internal server error; the server log has the details")


# Every error status of every route is documented with the one error shape (DESIGN §4).
_ERROR_STATUSES = {
    400: "The body is not valid JSON.",
    401: "Missing, malformed or revoked API key.",
    404: "No such object for this tenant.",
    413: "The request body is over this server's limit.",
    422: "A field, parameter or header is invalid (param names it; details lists every problem).",
}


def _document_errors(router: APIRouter) -> dict[int | str, dict[str, Any]]:
    """Give each route's own 4xx/5xx responses the ErrorResponse model; returns the router-wide defaults."""
    for route in router.routes:
        for status, response in getattr(route, "responses", {}).items():
            if str(status)[0] in "45":
                response.setdefault("model", ErrorResponse)
    return {status: {"model": ErrorResponse, "description": text} for status, text in _ERROR_STATUSES.items()}


def create_app() -> FastAPI:
    app = FastAPI(
        title="alignd",
        version=api.__version__,
        summary="Self-hosted preference alignment: DPO, GRPO, PPO, reward models and SFT as jobs.",
    )
    app.add_exception_handler(AlignError, _align_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(
        RequestLimits,
        max_body_bytes=lambda: get_settings().max_json_body_bytes,
        streamed_uploads=frozenset({"/v1/datasets", "/v1/datasets/validate"}),
    )
    _document_errors(ops_router)
    app.include_router(ops_router)
    for router in (datasets_router, jobs_router, checkpoints_router, reward_models_router, models_router, plan_router):
        app.include_router(router, prefix="/v1", responses=_document_errors(router))
    return app
