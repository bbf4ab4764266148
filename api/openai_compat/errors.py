"""OpenAI's error shape on the OpenAI-compatible routes.

alignd renders errors as `{"error": {code, message, param, details}}` (api.main); OpenAI's clients
expect `{"error": {message, type, param, code}}` and a 400 for a request they can fix. `OpenAIRoute`
(the route class of this package's routers) lets the app's own handlers render the error, then
reshapes it: `type` is added (`invalid_request_error`, or `server_error` for 5xx), 422 becomes 400
(so the openai SDK raises BadRequestError, as against OpenAI), and `details` is kept when it says
more (e.g. the bad lines of a file).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from api.core.errors import InvalidRequest


class Unsupported(InvalidRequest):
    """A request OpenAI's API accepts but alignd cannot honour (a grader, an option, an operation)."""

    status_code = 400
    code = "unsupported"


def to_openai(response: Response) -> Response:
    """Reshape an alignd error response into OpenAI's error object."""
    try:
        body = orjson.loads(bytes(response.body))
        error = body["error"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return response
    status = 400 if response.status_code == 422 else response.status_code
    shaped: dict[str, Any] = {
        "message": error.get("message", ""),
        "type": "server_error" if status >= 500 else "invalid_request_error",
        "param": error.get("param"),
        "code": error.get("code"),
    }
    if error.get("details"):
        shaped["details"] = error["details"]
    headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
    return JSONResponse({"error": shaped}, status_code=status, headers=headers)


def _handler_for(request: Request, exc: Exception) -> Callable[[Request, Exception], Any] | None:
    handlers = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls in handlers:
            return handlers[cls]
    return None


class OpenAIRoute(APIRoute):
    """An APIRoute whose errors (auth, validation, domain errors, crashes) come out in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except Exception as exc:
                render = _handler_for(request, exc)
                if render is None:
                    raise
                return to_openai(await render(request, exc))

        return handler
