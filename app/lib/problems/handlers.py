"""The exception handlers: every error leaves as problem+json (outages 503, bad input 4xx, bugs 500)."""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from advanced_alchemy.exceptions import RepositoryError
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from app.lib.problems.errors import CODES_BY_STATUS, ApiError, Problem, default_title, problem_response
from app.lib.problems.outages import is_database_unavailable, is_valkey_unavailable
from app.lib.request_limits import MAX_BODY_TEXT

logger = logging.getLogger("app.lib.problems")


def api_error_handler(request: Request[Any, Any, Any], exc: ApiError) -> Response[Problem]:
    return problem_response(request, exc.status, exc.code, exc.title, exc.detail, headers=exc.headers)


def http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status = exc.status_code
    if status >= 500:
        return internal_error_handler(request, exc)
    cause = exc.__cause__
    if isinstance(exc, NotFoundException) and isinstance(cause, ValueError) and not isinstance(cause, HTTPException):
        # The router matched a route but a typed path parameter (e.g. `{session_id:uuid}`) did not parse:
        # that is bad input, not a missing resource. (A route that does not exist re-raises a NotFoundException,
        # itself a ValueError, as the cause.)
        return problem_response(
            request,
            400,
            "VALIDATION_ERROR",
            "Invalid path parameter",
            "A path parameter is malformed (e.g. not a UUID).",
        )
    code = CODES_BY_STATUS.get(status, "BAD_REQUEST")
    errors: list[dict[str, Any]] | None = None
    detail = exc.detail
    if isinstance(exc, ValidationException):
        code = "VALIDATION_ERROR"
        extra = exc.extra
        if isinstance(extra, list):
            errors = [e if isinstance(e, dict) else {"message": str(e)} for e in extra]
        elif isinstance(extra, dict):
            errors = [extra]
    if status == 413:
        detail = f"The request body is larger than the {MAX_BODY_TEXT} limit."
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="agent-api", X-API-Key')
    return problem_response(request, status, code, default_title(status, code), detail, headers=headers, errors=errors)


_DECODING_MODULES = ("litestar._kwargs", "litestar.connection", "litestar.serialization", "msgspec")


def _raised_while_decoding_request(tb: TracebackType | None) -> bool:
    """Whether the exception came out of Litestar reading and decoding the request (before any handler ran)."""
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.startswith(_DECODING_MODULES):
            return True
        tb = tb.tb_next
    return False


def undecodable_request_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    """Bodies msgspec cannot decode without a DecodeError: invalid UTF-8, nesting deeper than the recursion limit."""
    if _raised_while_decoding_request(exc.__traceback__):
        detail = (
            "The JSON body is nested too deeply."
            if isinstance(exc, RecursionError)
            else "The request body is not valid UTF-8."
        )
        return problem_response(request, 400, "VALIDATION_ERROR", "Validation error", detail)
    return internal_error_handler(request, exc)


def repository_error_handler(request: Request[Any, Any, Any], exc: RepositoryError) -> Response[Problem]:
    """Advanced-Alchemy wraps SQLAlchemy errors; answer them as problems too (503 when Postgres is down)."""
    return internal_error_handler(request, exc)


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    if is_valkey_unavailable(exc):
        return problem_response(
            request,
            503,
            "VALKEY_UNAVAILABLE",
            "Valkey unavailable",
            "Valkey cannot be reached; try again shortly.",
            headers={"Retry-After": "2"},
        )
    if is_database_unavailable(exc):
        return problem_response(
            request,
            503,
            "DATABASE_UNAVAILABLE",
            "Database unavailable",
            "PostgreSQL cannot be reached; try again shortly.",
            headers={"Retry-After": "2"},
        )
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(
        request,
        HTTP_500_INTERNAL_SERVER_ERROR,
        "INTERNAL_ERROR",
        "Internal server error",
        "An unexpected error occurred.",
    )


def exception_handlers() -> dict[type[Exception] | int, Any]:
    return {
        ApiError: api_error_handler,
        HTTPException: http_exception_handler,
        # Registering it keeps Advanced-Alchemy's plugin from installing its non-problem+json handler.
        RepositoryError: repository_error_handler,
        RecursionError: undecodable_request_handler,
        UnicodeDecodeError: undecodable_request_handler,
        Exception: internal_error_handler,
    }
