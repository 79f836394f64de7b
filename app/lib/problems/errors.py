"""The problem type: RFC 9457 problem+json with our `code` member, and `ApiError`, which handlers raise."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response

PROBLEM_JSON = "application/problem+json"

CODES_BY_STATUS = {
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

    @classmethod
    def of(
        cls,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        instance: str | None = None,
        errors: list[dict[str, Any]] | None = None,
    ) -> Problem:
        """A problem whose `type` is its code's URI (`https://agent-api.dev/problems/<code, kebab-case>`)."""
        return cls(
            type=f"https://agent-api.dev/problems/{code.lower().replace('_', '-')}",
            title=title,
            status=status,
            code=code,
            detail=detail,
            instance=instance,
            errors=errors,
        )


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
    body = Problem.of(status, code, title, detail, request.url.path if request is not None else None, errors)
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def default_title(status: int, code: str) -> str:
    return {401: "Unauthorized", 404: "Not found", 405: "Method not allowed", 413: "Request too large"}.get(
        status, code.replace("_", " ").capitalize()
    )
