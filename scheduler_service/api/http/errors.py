"""OpenAI's error object and status codes for the HTTP API: the one map from exceptions (the
same ones the gRPC API maps to status codes) to `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from yaie.scheduler_service.engine.errors import ResourceExhaustedError, UnavailableError

# status -> (type, code) of the error object
_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "queue_full"),
    503: ("server_error", "unavailable"),
}


class ApiError(Exception):
    """An error answered as it is (401, 404 ...); ValueError and the engine's errors map below."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind, code = _KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def status_of(error: Exception) -> int:
    if isinstance(error, ApiError):
        return error.status
    if isinstance(error, ValueError):
        return 400
    if isinstance(error, ResourceExhaustedError):
        return 429
    if isinstance(error, UnavailableError):
        return 503
    return 500


def error_response(error: Exception) -> JSONResponse:
    status = status_of(error)
    param = error.param if isinstance(error, ApiError) else None
    return JSONResponse(error_body(status, str(error), param), status_code=status)


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """The first problem, named by its field path (e.g. `messages.0.content`)."""
    first = error.errors()[0] if error.errors() else {"msg": "invalid request", "loc": ()}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first['msg']}" if param else first["msg"]), param


def install_handlers(app: FastAPI) -> None:
    """Every error leaves the app as an OpenAI error object (never FastAPI's 422 or detail)."""

    async def on_validation(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(error)
        return JSONResponse(error_body(400, message, param), status_code=400)

    async def on_http(request: Request, error: HTTPException) -> JSONResponse:
        body = error_body(error.status_code, str(error.detail))
        body["error"]["code"] = None  # e.g. 404 for a route: not a model_not_found
        return JSONResponse(body, status_code=error.status_code)

    async def on_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(error)

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(HTTPException, on_http)
    for kind in (ApiError, ValueError, ResourceExhaustedError, UnavailableError):
        app.add_exception_handler(kind, on_error)
