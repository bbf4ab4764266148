"""The OpenAPI schema declares every error the API answers, with DESIGN §4's error JSON as its body.

FastAPI documents only the responses a route names, and for 422 its own `{"detail": [...]}` shape,
which this API never returns (api.main renders every error as `{"error": {...}}`). `document_errors`
completes the generated schema once, from what each operation has: 401 where an API key is required,
404 where an id is in the path, 400/413/415 where a body is sent, 422 where anything is validated; and
every 4xx/5xx response gets the error JSON schema (routes keep their own descriptions).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from api.core.errors import ErrorResponse


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    """The error object of OpenAI's API, which api/openai_compat answers with."""

    error: OpenAIErrorBody


# OpenAI's fine-tuning surface answers its own error object, and 400 where we would say 422.
OPENAI_PATHS = ("/v1/files", "/v1/fine_tuning")
_OPENAI_ERROR_REF = {"$ref": "#/components/schemas/OpenAIErrorResponse"}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}

_DESCRIPTIONS = {
    400: "The request body is not valid JSON (code invalid_json) or multipart/form-data (invalid_multipart).",
    401: "Missing, malformed, unknown or revoked API key.",
    404: "Not found (another tenant's objects are not found either).",
    413: "The request body is too large.",
    415: "The request body is not multipart/form-data.",
    422: "Invalid request: `param` names the first bad field, `details` lists every problem.",
}


def _error_codes(operation: dict[str, Any]) -> set[int]:
    params = operation.get("parameters", [])
    body = (operation.get("requestBody") or {}).get("content", {})
    codes: set[int] = set()
    if operation.get("security"):
        codes.add(401)
    if any(p.get("in") == "path" for p in params):
        codes.add(404)
    if body:
        codes |= {400, 413, 422}
    if "multipart/form-data" in body:
        codes.add(415)
    if params:
        codes.add(422)
    return codes


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the error responses each operation can give and the error JSON schema to every error response."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorResponse, OpenAIErrorResponse):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(model_schema.pop("$defs", {}))
        components[model.__name__] = model_schema
    for path, path_item in schema.get("paths", {}).items():
        openai = path.startswith(OPENAI_PATHS)
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            codes = _error_codes(operation)
            if openai:  # its validation errors are 400s
                responses.pop("422", None)
                codes = {400 if code == 422 else code for code in codes}
            for code in codes:
                if str(code) not in responses or code == 422:  # FastAPI's own 422 has the wrong shape
                    responses[str(code)] = {"description": _DESCRIPTIONS[code]}
            for code, response in responses.items():
                if code[0] in "45":
                    ref = _OPENAI_ERROR_REF if openai else _ERROR_REF
                    response["content"] = {"application/json": {"schema": ref}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    """Serve the completed schema at /openapi.json (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
