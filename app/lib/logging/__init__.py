"""Structured logs: structlog through Litestar's `StructlogPlugin`, one JSON object per line on stdout.

Both structlog loggers and the standard library's (`logging.getLogger(__name__)`, used across the app and its
libraries) end in one handler and one formatter, so every line has the same shape::

    {"event": "request", "level": "info", "timestamp": "...", "logger": "app.access", "request_id": "...",
     "instance_id": "...", "session_id": "...", "run_id": "...", "method": "GET", "path": "...",
     "client": "203.0.113.7", ...}

Context comes from contextvars (`structlog.contextvars`): `RequestContextMiddleware` binds `request_id` and
`instance_id` for each request, handlers bind `session_id` (`bind_log_context`), and a run's task binds its
own `session_id` and `run_id`. API keys never reach a line: no headers are logged, and values that look like a
key are masked as a last line of defence.
"""

from app.lib.logging.context import LOG_CONTEXT_KEYS, bind_log_context, bind_session_from_path, log_context
from app.lib.logging.middleware import RequestContextMiddleware, install
from app.lib.logging.output import log_to_stderr
from app.lib.logging.request_ids import REQUEST_ID_HEADER, new_request_id, request_id_from_scope, sane_request_id
from app.lib.logging.setup import build_structlog_plugin

__all__ = (
    "LOG_CONTEXT_KEYS",
    "REQUEST_ID_HEADER",
    "RequestContextMiddleware",
    "bind_log_context",
    "bind_session_from_path",
    "build_structlog_plugin",
    "install",
    "log_context",
    "log_to_stderr",
    "new_request_id",
    "request_id_from_scope",
    "sane_request_id",
)
