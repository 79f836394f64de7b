"""The problems the runs domain answers with: one constructor per code, each message said once."""

from __future__ import annotations

from uuid import UUID

from app.lib.problems import ApiError


def run_not_found(run_id: UUID) -> ApiError:
    return ApiError(404, "RUN_NOT_FOUND", f"Run {run_id} does not exist.", title="Run not found")


def session_busy(session_id: UUID) -> ApiError:
    return ApiError(
        409,
        "SESSION_BUSY",
        f"Session {session_id} has an active run (if_busy=enqueue queues this one instead).",
        title="Session busy",
    )


def queue_full(session_id: UUID, limit: int) -> ApiError:
    return ApiError(409, "QUEUE_FULL", f"Session {session_id} already has {limit} queued runs.", title="Queue full")


def not_running(session_id: UUID) -> ApiError:
    return ApiError(409, "NOT_RUNNING", f"Session {session_id} has no active run.", title="Not running")


def no_pending_question() -> ApiError:
    return ApiError(409, "NO_PENDING_QUESTION", "The run is not waiting for an answer.", title="No pending question")


def valkey_unavailable() -> ApiError:
    return ApiError(
        503,
        "VALKEY_UNAVAILABLE",
        "Valkey cannot be reached; runs need it. Try again shortly.",
        title="Valkey unavailable",
        headers={"Retry-After": "2"},
    )


def shutting_down() -> ApiError:
    return ApiError(
        503,
        "SHUTTING_DOWN",
        "This instance is shutting down; retry on another.",
        title="Shutting down",
        headers={"Retry-After": "1"},
    )


def invalid_run_options(message: str) -> ApiError:
    return ApiError(422, "VALIDATION_ERROR", message, title="Invalid run options")


def invalid_event_id(detail: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", detail, title="Invalid event id")
