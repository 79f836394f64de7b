"""RFC 9457 problem+json for every error, with our `code` member, and the exception handlers that make them."""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

import asyncpg
import msgspec
from advanced_alchemy.exceptions import RepositoryError
from litestar import Request, Response
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from sqlalchemy import exc as sa_exc

from app.lib.valkey.errors import VALKEY_OUTAGE_ERRORS

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

_CODES_BY_STATUS = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    412: "VERSION_CONFLICT",
    413: "REQUEST_TOO_LARGE",
    414: "URI_TOO_LONG",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "VALIDATION_ERROR",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


class Problem(msgspec.Struct, omit_defaults=True):
    """The body of every error response."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ApiError(Exception):
    """Raise from any layer to answer with a problem+json response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str | None = None,
        *,
        title: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.detail = detail
        self.title = title or code.replace("_", " ").capitalize()
        self.headers = headers or {}


def problem_response(
    request: Request[Any, Any, Any] | None,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    headers: dict[str, str] | None = None,
    errors: list[dict[str, Any]] | None = None,
) -> Response[Problem]:
    body = Problem(
        type=f"https://agent-api.dev/problems/{code.lower().replace('_', '-')}",
        title=title,
        status=status,
        code=code,
        detail=detail,
        instance=request.url.path if request is not None else None,
        errors=errors,
    )
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_DB_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    sa_exc.DisconnectionError,
    sa_exc.InterfaceError,
    sa_exc.OperationalError,
    # The connection pool is exhausted (every connection checked out past `pool_timeout`): busy, not broken.
    sa_exc.TimeoutError,
    ConnectionError,
    asyncio.TimeoutError,
)


def is_database_unavailable(exc: BaseException) -> bool:
    for item in _chain(exc):
        if isinstance(item, _DB_DOWN):
            return True
        if isinstance(item, sa_exc.DBAPIError) and item.connection_invalidated:
            return True
        if isinstance(item, OSError):
            # A bare OSError from the Postgres driver: connection refused, socket gone. Valkey's errors
            # are checked first by the caller.
            return True
    return False


def is_valkey_unavailable(exc: BaseException) -> bool:
    # Valkey's own errors only: a bare OSError may as well be the database's.
    return any(isinstance(item, VALKEY_OUTAGE_ERRORS) for item in _chain(exc))


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
    code = _CODES_BY_STATUS.get(status, "BAD_REQUEST")
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
        detail = "The request body is larger than the 1 MiB limit."
    headers = dict(exc.headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="agent-api", X-API-Key')
    return problem_response(request, status, code, _title(status, code), detail, headers=headers, errors=errors)


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


def _title(status: int, code: str) -> str:
    return {401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 413: "Request too large"}.get(
        status, code.replace("_", " ").capitalize()
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


__all__ = ("PROBLEM_JSON", "ApiError", "Problem", "exception_handlers", "is_database_unavailable", "problem_response")


_DESCRIPTIONS = {
    400: "Malformed request (code VALIDATION_ERROR).",
    401: "Missing, invalid, revoked or malformed API key (code UNAUTHORIZED).",
    404: "No such resource for this API key (SESSION_NOT_FOUND, RUN_NOT_FOUND, WEBHOOK_ENDPOINT_NOT_FOUND).",
    405: "The path does not take this method (code METHOD_NOT_ALLOWED); `Allow` lists the ones it takes.",
    409: (
        "Conflict with the session's state (SESSION_BUSY, SESSION_LOCKED, QUEUE_FULL, NOT_RUNNING, "
        "NO_PENDING_QUESTION, VERSION_CONFLICT), a repeat of a request still being accepted "
        "(IDEMPOTENCY_IN_PROGRESS, see Retry-After), or too many webhook endpoints (WEBHOOK_ENDPOINT_LIMIT)."
    ),
    412: "If-Match did not match the session's version (code VERSION_CONFLICT).",
    413: "Request body over 1 MiB (code REQUEST_TOO_LARGE).",
    414: "Request target (path and query) over 8 KiB (code URI_TOO_LONG).",
    422: (
        "The body failed validation or the agent backend refuses it (VALIDATION_ERROR; `errors` lists each "
        "problem), an Idempotency-Key reused for another request (IDEMPOTENCY_KEY_REUSED), or a refused webhook "
        "URL (WEBHOOK_URL_REFUSED)."
    ),
    429: (
        "Rate limit exceeded (code RATE_LIMITED): requests per API key, or failed authentications per client "
        "address (AUTH_FAILURES_PER_MINUTE); see Retry-After."
    ),
    503: (
        "Valkey or PostgreSQL unavailable (VALKEY_UNAVAILABLE, DATABASE_UNAVAILABLE), or, for a request that "
        "starts a run, the instance is shutting down (SHUTTING_DOWN: retry on another instance); see Retry-After."
    ),
}

# One real example per status, as the API sends it (the schema's generated examples were random strings).
_EXAMPLES: dict[int, tuple[str, str, str]] = {
    400: ("VALIDATION_ERROR", "Invalid If-Match", 'If-Match must be "*" or a list of session versions such as "3".'),
    401: ("UNAUTHORIZED", "Unauthorized", "Missing or invalid API key."),
    404: ("SESSION_NOT_FOUND", "Session not found", "Session 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b does not exist."),
    405: ("METHOD_NOT_ALLOWED", "Method not allowed", "Method PUT not allowed."),
    409: ("SESSION_BUSY", "Session busy", "The session has an active run; interrupt it first."),
    412: ("VERSION_CONFLICT", "Version conflict", 'If-Match "1" does not match the current version "2".'),
    413: ("REQUEST_TOO_LARGE", "Request too large", "The request body is larger than the 1 MiB limit."),
    414: ("URI_TOO_LONG", "URI too long", "The request target (path and query) is 9000 bytes; the limit is 8192."),
    422: ("VALIDATION_ERROR", "Validation error", "Validation failed for POST /api/v1/sessions"),
    429: ("RATE_LIMITED", "Rate limited", "Rate limit of 600 requests per minute exceeded."),
    503: ("DATABASE_UNAVAILABLE", "Database unavailable", "PostgreSQL cannot be reached; try again shortly."),
}

EXAMPLE_INSTANCE = "/api/v1/sessions/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def example_problem(status: int) -> dict[str, Any]:
    code, title, detail = _EXAMPLES.get(status, ("INTERNAL_ERROR", "Internal server error", "An unexpected error."))
    body = Problem(
        type=f"https://agent-api.dev/problems/{code.lower().replace('_', '-')}",
        title=title,
        status=status,
        code=code,
        detail=detail,
        instance=EXAMPLE_INSTANCE,
    )
    example: dict[str, Any] = msgspec.to_builtins(body)
    if status == 422:
        example["errors"] = [{"message": "Expected `str` of length <= 200", "key": "title", "source": "body"}]
    return example


ERROR_CODES_DOC = """Errors are RFC 9457 `application/problem+json` bodies (the `Problem` schema) with a
machine-readable `code`:

| status | code |
|---|---|
| 400 | `VALIDATION_ERROR` (malformed parameter, header or JSON) |
| 401 | `UNAUTHORIZED` |
| 404 | `SESSION_NOT_FOUND`, `RUN_NOT_FOUND`, `WEBHOOK_ENDPOINT_NOT_FOUND`, `NOT_FOUND` (no such route) |
| 405 | `METHOD_NOT_ALLOWED` (see `Allow`) |
| 409 | `SESSION_BUSY`, `SESSION_LOCKED`, `QUEUE_FULL`, `NOT_RUNNING`, `NO_PENDING_QUESTION`, `VERSION_CONFLICT`, \
`IDEMPOTENCY_IN_PROGRESS`, `WEBHOOK_ENDPOINT_LIMIT` |
| 412 | `VERSION_CONFLICT` (If-Match) |
| 413 | `REQUEST_TOO_LARGE` (body over 1 MiB) |
| 414 | `URI_TOO_LONG` (request target over 8 KiB) |
| 415 | `UNSUPPORTED_MEDIA_TYPE` |
| 422 | `VALIDATION_ERROR` (`errors` lists each problem; also a backend refusal, e.g. an unknown model), \
`IDEMPOTENCY_KEY_REUSED`, `WEBHOOK_URL_REFUSED` |
| 429 | `RATE_LIMITED` (see `Retry-After`) |
| 500 | `INTERNAL_ERROR` |
| 503 | `DATABASE_UNAVAILABLE`, `VALKEY_UNAVAILABLE`, `SHUTTING_DOWN` (a run start on a draining instance) |

A run's event stream reports its own failures as an `error` event `{code, message}` before `done`:
`AGENT_ERROR` (the agent failed or ended without a result) and `RUN_LOST` (the instance running it stopped, or
the run lost its lease); the same codes appear in a finished run's `error`."""


def problem_responses(*statuses: int) -> dict[int, Any]:
    """OpenAPI response entries for the problem+json errors an operation can answer with."""
    from litestar.openapi.datastructures import ResponseSpec
    from litestar.openapi.spec import Example

    codes = sorted({400, 401, 405, 413, 414, 429, 503, *statuses})
    return {
        status: ResponseSpec(
            data_container=Problem,
            description=_DESCRIPTIONS.get(status, "Error"),
            media_type=PROBLEM_JSON,
            generate_examples=False,
            examples=[Example(summary=_EXAMPLES.get(status, ("",))[0], value=example_problem(status))],
        )
        for status in codes
    }
