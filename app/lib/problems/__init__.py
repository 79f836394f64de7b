"""RFC 9457 problem+json for every error: the type (`errors`), which errors are outages (`outages`), the
exception handlers (`handlers`) and how problems are documented (`openapi`)."""

from __future__ import annotations

from app.lib.problems.errors import PROBLEM_JSON, ApiError, Problem, problem_response
from app.lib.problems.handlers import exception_handlers
from app.lib.problems.openapi import ERROR_CODES_DOC, example_problem, problem_responses
from app.lib.problems.outages import is_database_unavailable, is_valkey_unavailable

__all__ = (
    "ERROR_CODES_DOC",
    "PROBLEM_JSON",
    "ApiError",
    "Problem",
    "example_problem",
    "exception_handlers",
    "is_database_unavailable",
    "is_valkey_unavailable",
    "problem_response",
    "problem_responses",
)
