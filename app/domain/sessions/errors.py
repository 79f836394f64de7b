"""The problems the sessions domain answers with: one constructor per case, each message said once."""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

from app.lib.problems import ApiError


def session_not_found(session_id: UUID) -> ApiError:
    # Also for another key's session (never 403: no leak).
    return ApiError(404, "SESSION_NOT_FOUND", f"Session {session_id} does not exist.", title="Session not found")


def invalid_session_settings(message: str) -> ApiError:
    return ApiError(422, "VALIDATION_ERROR", message, title="Invalid session settings")


def session_locked() -> ApiError:
    return ApiError(
        409, "SESSION_LOCKED", "The session is locked by another writer; try again.", headers={"Retry-After": "1"}
    )


def if_match_mismatch(expected: Iterable[int], current: int) -> ApiError:
    sent = ", ".join(f'"{v}"' for v in sorted(expected)) or "(no session version)"
    return ApiError(
        412,
        "VERSION_CONFLICT",
        f'If-Match {sent} does not match the current version "{current}".',
        title="Version conflict",
    )


def changed_concurrently() -> ApiError:
    """With If-Match: another writer's version landed first (412)."""
    return ApiError(412, "VERSION_CONFLICT", "The session changed concurrently.", title="Version conflict")


def kept_changing() -> ApiError:
    """Without If-Match: the fenced retries all lost their race (409: try again)."""
    return ApiError(
        409, "VERSION_CONFLICT", "The session kept changing concurrently; try again.", title="Version conflict"
    )


def busy_for_delete() -> ApiError:
    return ApiError(409, "SESSION_BUSY", "The session has an active run; interrupt it first.", title="Session busy")


def invalid_if_match(detail: str) -> ApiError:
    return ApiError(400, "VALIDATION_ERROR", detail, title="Invalid If-Match")
