"""Errors on /v1 in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`, with the same statuses as /api/v1.

The official clients pick their exception class by status (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 409 ConflictError, 422 UnprocessableEntityError, 429 RateLimitError, >= 500 InternalServerError).
Every /v1 route gets these handlers (they also see the authentication middleware's 401); the rate limiter
writes this shape itself for routes whose `opt` carries `ERROR_SHAPE_OPT`."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from msgspec import Struct

from app.lib.problems import ApiError, Problem
from app.lib.problems.handlers import (
    api_error_handler,
    http_exception_handler,
    internal_error_handler,
    undecodable_request_handler,
)
from app.lib.request_limits import MAX_BODY_TEXT

ERROR_SHAPE_OPT = "error_shape"
OPENAI_SHAPE = "openai"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(Struct, omit_defaults=False):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(Struct):
    error: ErrorDetail


class OpenAIError(Exception):
    """Raise from the openai domain for an error with a `param` (e.g. an unsupported parameter)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers or {}


def unsupported(param: str, why: str = "") -> OpenAIError:
    detail = f" {why}" if why else ""
    return OpenAIError(
        400,
        f"Unsupported parameter: '{param}' is not supported by this server.{detail}",
        param=param,
        code="unsupported_parameter",
    )


def invalid(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="invalid_value")


def error_body(status: int, message: str, *, code: str | None, param: str | None = None) -> bytes:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return msgspec.json.encode(ErrorBody(ErrorDetail(message=message, type=kind, param=param, code=code)))


def _response(exc: OpenAIError) -> Response[ErrorBody]:
    headers = dict(exc.headers)
    return Response(
        ErrorBody(ErrorDetail(message=exc.message, type=exc.type, param=exc.param, code=exc.code)),
        status_code=exc.status,
        headers=headers,
        media_type="application/json",
    )


_UNKNOWN_FIELD = re.compile(r"(?:unknown|required) field `([^`]+)`")
_FIELD_PATH = re.compile(r"at `\$\.([^`]+)`")


def _param(problem: Problem) -> str | None:
    for item in problem.errors or ():
        message = str(item.get("message", ""))
        for pattern in (_UNKNOWN_FIELD, _FIELD_PATH):
            match = pattern.search(message)
            if match:
                return match.group(1)
        key = item.get("key")
        if isinstance(key, str) and key:
            return key
    return None


def _from_problem(response: Response[Any]) -> Response[ErrorBody]:
    problem = response.content
    if not isinstance(problem, Problem):
        return response
    message = problem.detail or problem.title
    param = _param(problem)
    if problem.errors:
        first = problem.errors[0]
        message = str(first.get("message") or message)
        if param and problem.code == "VALIDATION_ERROR" and "unknown field" in message:
            message = f"Unrecognized request argument supplied: {param}"
    headers = {k: v for k, v in response.headers.items() if k.lower() != "content-type"}
    return _response(OpenAIError(problem.status, message, param=param, code=problem.code.lower(), headers=headers))


def openai_error_handler(request: Request[Any, Any, Any], exc: OpenAIError) -> Response[ErrorBody]:
    return _response(exc)


def openai_api_error_handler(request: Request[Any, Any, Any], exc: ApiError) -> Response[ErrorBody]:
    return _from_problem(api_error_handler(request, exc))


def openai_http_exception_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    if exc.status_code == 401:
        return _response(OpenAIError(401, str(exc.detail), code="invalid_api_key"))
    return _from_problem(http_exception_handler(request, exc))


def openai_internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if isinstance(exc, (RecursionError, UnicodeDecodeError)):
        return _from_problem(undecodable_request_handler(request, exc))
    return _from_problem(internal_error_handler(request, exc))


def openai_exception_handlers() -> dict[type[Exception] | int, Any]:
    return {
        OpenAIError: openai_error_handler,
        ApiError: openai_api_error_handler,
        ValidationException: openai_http_exception_handler,
        HTTPException: openai_http_exception_handler,
        Exception: openai_internal_error_handler,
    }


_DESCRIPTIONS = {
    400: "Malformed request or unsupported parameter (`param` names it).",
    401: "Missing, invalid or revoked API key (code invalid_api_key).",
    404: "No such model, response or session for this API key.",
    409: "The session already has an active run (code session_busy).",
    413: f"Request body over {MAX_BODY_TEXT}.",
    422: "The agent backend refuses the request (e.g. a tool name).",
    429: "Rate limit exceeded; see Retry-After.",
    500: "The agent run failed (code agent_error); not to be retried (x-should-retry: false).",
    503: "Valkey or PostgreSQL unavailable; see Retry-After.",
}


def openai_error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS.get(status, "Error"))
        for status in sorted({400, 401, 413, 429, 503, *statuses})
    }
