"""The one table from domain errors to HTTP statuses, and the JSON error shape.

Every error response is ``{"error": "<Kind>", "detail": "<what, on which value, what to do>"}``.
"""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from registry import errors

log = logging.getLogger(__name__)

STATUS_BY_ERROR: dict[type[errors.RegistryError], int] = {
    errors.NotFound: 404,
    errors.Conflict: 409,
    errors.GateRejected: 409,
    errors.InvalidInput: 422,
    errors.InvalidAdapter: 422,
    errors.DigestMismatch: 422,
    errors.PayloadTooLarge: 413,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.IntegrityError: 500,
    errors.InternalError: 500,
    errors.ServiceUnavailable: 503,
    errors.StorageError: 503,
}

_HTTP_KINDS = {
    400: "InvalidInput",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "InvalidInput",
}

# The shape of every error body, for the `responses=` declarations of routes.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
}


def status_for(error: errors.RegistryError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_response(status: int, kind: str, detail: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI `responses=` entries for the error statuses a route declares."""
    return {
        status: {
            "description": _HTTP_KINDS.get(status, "Error"),
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in statuses
    }


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.RegistryError)
    async def _registry_error(_request: Request, error: errors.RegistryError) -> JSONResponse:
        status = status_for(error)
        if status >= 500:
            log.error("%s: %s", error.kind, error.detail)
        return error_response(status, error.kind, error.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for item in error.errors()[:10]:
            where = ".".join(str(part) for part in item.get("loc", ()))
            problems.append(f"{where}: {item.get('msg')}")
        return error_response(422, "InvalidInput", "invalid request: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = _HTTP_KINDS.get(error.status_code, "HTTPError")
        return error_response(error.status_code, kind, str(error.detail))

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeoutError)
    async def _database_down(_request: Request, error: Exception) -> JSONResponse:
        log.error("database unavailable: %s", type(error).__name__)
        return error_response(
            503,
            "ServiceUnavailable",
            "the registry database is unavailable; retry shortly (the server reconnects "
            "on its own)",
        )

    @app.exception_handler(DataError)
    async def _value_out_of_range(request: Request, error: DataError) -> JSONResponse:
        # A value that passed the API's checks but not the column type, such as a
        # number beyond PostgreSQL's 32-bit integer in a query or path parameter.
        reason = str(error.orig).splitlines()[0] if error.orig is not None else "invalid value"
        log.warning("rejected %s %s: %s", request.method, request.url.path, reason)
        return error_response(
            422,
            "InvalidInput",
            f"invalid value in the request to {request.url.path}: {reason}; "
            "use numbers from 1 to 2147483647 and check the other values",
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(_request: Request, error: DBAPIError) -> JSONResponse:
        if error.connection_invalidated:
            return await _database_down(_request, error)
        return _internal(error)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        return _internal(error)


def _internal(error: Exception) -> JSONResponse:
    incident = uuid.uuid4().hex[:12]
    log.exception("internal error %s", incident, exc_info=error)
    return error_response(
        500,
        "InternalError",
        f"internal server error {incident}; the server log has the details under this id",
    )
