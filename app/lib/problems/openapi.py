"""How problems are documented: per-status responses, examples and the error-code table of the OpenAPI
description."""

from __future__ import annotations

from typing import Any

import msgspec

from app.lib.problems.errors import PROBLEM_JSON, Problem
from app.lib.request_limits import MAX_BODY_TEXT

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
    413: f"Request body over {MAX_BODY_TEXT} (code REQUEST_TOO_LARGE).",
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
    413: ("REQUEST_TOO_LARGE", "Request too large", f"The request body is larger than the {MAX_BODY_TEXT} limit."),
    414: ("URI_TOO_LONG", "URI too long", "The request target (path and query) is 9000 bytes; the limit is 8192."),
    422: ("VALIDATION_ERROR", "Validation error", "Validation failed for POST /api/v1/sessions"),
    429: ("RATE_LIMITED", "Rate limited", "Rate limit of 600 requests per minute exceeded."),
    503: ("DATABASE_UNAVAILABLE", "Database unavailable", "PostgreSQL cannot be reached; try again shortly."),
}

EXAMPLE_INSTANCE = "/api/v1/sessions/0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def example_problem(status: int) -> dict[str, Any]:
    code, title, detail = _EXAMPLES.get(status, ("INTERNAL_ERROR", "Internal server error", "An unexpected error."))
    body = Problem.of(status, code, title, detail, EXAMPLE_INSTANCE)
    example: dict[str, Any] = msgspec.to_builtins(body)
    if status == 422:
        example["errors"] = [{"message": "Expected `str` of length <= 200", "key": "title", "source": "body"}]
    return example


ERROR_CODES_DOC = f"""Errors are RFC 9457 `application/problem+json` bodies (the `Problem` schema) with a
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
| 413 | `REQUEST_TOO_LARGE` (body over {MAX_BODY_TEXT}) |
| 414 | `URI_TOO_LONG` (request target over 8 KiB) |
| 415 | `UNSUPPORTED_MEDIA_TYPE` |
| 422 | `VALIDATION_ERROR` (`errors` lists each problem; also a backend refusal, e.g. an unknown model), \
`IDEMPOTENCY_KEY_REUSED`, `WEBHOOK_URL_REFUSED` |
| 429 | `RATE_LIMITED` (see `Retry-After`) |
| 500 | `INTERNAL_ERROR` |
| 503 | `DATABASE_UNAVAILABLE`, `VALKEY_UNAVAILABLE`, `SHUTTING_DOWN` (a run start on a draining instance) |

A run's event stream reports its own failures as an `error` event `{{code, message}}` before `done`:
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
