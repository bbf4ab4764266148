"""The FastAPI application: routers, and one place that renders every error as DESIGN §4's JSON."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

import api
from api.checkpoints.router import router as checkpoints_router
from api.core.errors import AlignError
from api.core.limits import RequestLimits
from api.core.openapi import OPENAI_PATHS
from api.core.openapi import install as install_openapi
from api.core.settings import get_settings
from api.core.validation import error_details
from api.dashboard import mount_dashboard
from api.datasets.router import router as datasets_router
from api.jobs.router import hyperparameters_router
from api.jobs.router import router as jobs_router
from api.models_dir.router import router as models_router
from api.openai_compat.errors import to_openai
from api.openai_compat.router import files_router as openai_files_router
from api.openai_compat.router import jobs_router as openai_jobs_router
from api.ops.metrics import HttpMetrics
from api.ops.router import router as ops_router
from api.pipelines.router import router as pipelines_router
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


def _allowed_methods(request: Request) -> str | None:
    """The methods the OpenAPI schema gives this path (its most specific template: fewest parameters).

    Starlette's 405 names only the first matching route's methods, and /v1/datasets/validate (POST) must
    not advertise the GET of /v1/datasets/{dataset_id}, which only answers it with a 404.
    """
    templates = []
    for template, item in request.app.openapi()["paths"].items():
        regex, _, params = compile_path(template)
        if regex.match(request.url.path):
            templates.append((len(params), [m.upper() for m in item if m != "parameters"]))
    if not templates:
        return None  # not in the schema (e.g. /docs): Starlette's own Allow
    fewest = min(n for n, _ in templates)
    return ", ".join(sorted({m for n, methods in templates if n == fewest for m in methods}))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        # FastAPI's JSON parse of the body hit Python's recursion limit (thousands of nested [ or {).
        return _error(400, "invalid_json", "the request body is not valid JSON here: it nests too deeply")
    response = _error(exc.status_code, _HTTP_CODES.get(exc.status_code, "http_error"), str(exc.detail))
    response.headers.update(exc.headers or {})
    allowed = _allowed_methods(request) if exc.status_code == 405 else None
    if allowed is not None:  # RFC 9110: a 405 lists the methods the resource supports
        response.headers["Allow"] = allowed
    return response


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal_error", "internal server error; the server log has the details")


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
        reshape=lambda path, response: to_openai(response) if path.startswith(OPENAI_PATHS) else response,
    )
    app.add_middleware(HttpMetrics)  # outermost: latency by route template, every status counted
    app.include_router(ops_router)
    for router in (datasets_router, jobs_router, hyperparameters_router, checkpoints_router, reward_models_router):
        app.include_router(router, prefix="/v1")
    for router in (models_router, plan_router, pipelines_router):
        app.include_router(router, prefix="/v1")
    # OpenAI's fine-tuning API (api/openai_compat) answers errors in OpenAI's own shape.
    for router in (openai_files_router, openai_jobs_router):
        app.include_router(router, prefix="/v1")
    mount_dashboard(app)
    install_openapi(app)
    return app
