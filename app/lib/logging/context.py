"""Ids on every log line of a request or a run's task, through structlog's contextvars."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from litestar import Request

LOG_CONTEXT_KEYS = ("request_id", "instance_id", "session_id", "run_id")


def bind_log_context(**values: object) -> None:
    """Adds ids (e.g. `session_id`) to every following log line of this request or task."""
    structlog.contextvars.bind_contextvars(**{k: str(v) for k, v in values.items() if v is not None})


@contextmanager
def log_context(**values: object) -> Iterator[None]:
    """Binds ids for the duration of a block (restoring the previous values after)."""
    tokens = structlog.contextvars.bind_contextvars(**{k: str(v) for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


async def bind_session_from_path(request: Request[Any, Any, Any]) -> None:
    """A controller's `before_request` hook: the `{session_id}` path parameter goes on the request's log lines."""
    session_id = request.path_params.get("session_id")
    if session_id is not None:
        bind_log_context(session_id=session_id)
