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

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import structlog
from litestar import Request
from litestar.enums import ScopeType
from litestar.logging.config import LoggingConfig, StructLoggingConfig
from litestar.plugins.structlog import StructlogConfig, StructlogPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from structlog.typing import EventDict, Processor, WrappedLogger

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
# A client's id is echoed only when it is short and made of token characters (no spaces, quotes or controls),
# so it can neither break a log line nor smuggle a header.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# `aak_` keys (see app.domain.keys.hashing) and anything sent as a credential header.
_KEY_PATTERN = re.compile(r"aak_[A-Za-z0-9_-]{8,}")
_CREDENTIAL_HEADERS = (b"x-api-key", b"authorization")
_SECRET_FIELDS = frozenset({"authorization", "x-api-key", "api_key", "apikey", "password", "token"})
_QUIET_PATHS = ("/health/", "/metrics")
LOG_CONTEXT_KEYS = ("request_id", "instance_id", "session_id", "run_id")

access_logger = logging.getLogger("app.access")


# -- request ids ---------------------------------------------------------------------------------------


def new_request_id() -> str:
    # 32 random hex digits, as uuid4().hex was, without building a UUID object (a few percent of a cached read).
    return os.urandom(16).hex()


def sane_request_id(value: str | bytes | None) -> str | None:
    """The client's id if it is sane (1-128 token characters), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE_REQUEST_ID.fullmatch(value) else None


def _carries_a_credential(request_id: str, credentials: list[bytes]) -> bool:
    """An id shaped like an API key, or containing the credential this request presents (a bootstrap `API_KEY`
    can be any string): it would be echoed in a header and written to every log line, so it is not used."""
    if _KEY_PATTERN.search(request_id):
        return True
    encoded = request_id.encode()
    return any(len(secret) >= 8 and secret in encoded for secret in credentials)


def request_id_from_scope(scope: Scope) -> str:
    """This request's id: the client's `X-Request-ID` when sane, else a new one; the same on every call."""
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if isinstance(request_id, str):
        return request_id
    credentials: list[bytes] = []
    for name, value in scope.get("headers", ()):
        if name == _REQUEST_ID_HEADER_BYTES:
            request_id = sane_request_id(value)
        elif name in _CREDENTIAL_HEADERS:
            credentials.append(value.split(b" ", 1)[1].strip() if value[:7].lower() == b"bearer " else value.strip())
    if request_id is not None and _carries_a_credential(request_id, credentials):
        request_id = None
    request_id = request_id or new_request_id()
    state["request_id"] = request_id
    return request_id


# -- context -------------------------------------------------------------------------------------------


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


# -- processors (module level: litestar-granian pickles the formatter for Granian's own logs) -------------


class DefaultInstanceId:
    """Adds the process's instance id to lines logged outside any request or run context."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id

    def __call__(self, _logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("instance_id", self.instance_id)
        return event_dict


def _mask(value: str) -> str:
    return _KEY_PATTERN.sub("aak_***", value) if "aak_" in value else value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Last line of defence: nothing that looks like an API key is written, whatever a caller logged."""
    for key, value in event_dict.items():
        if key.lower() in _SECRET_FIELDS:
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = _mask(value)
        elif isinstance(value, Mapping):
            event_dict[key] = {k: "***" if str(k).lower() in _SECRET_FIELDS else v for k, v in value.items()}
    return event_dict


def drop_color_message(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)
    return event_dict


def _json_serializer(value: Any, **_kwargs: Any) -> str:
    return msgspec.json.encode(value, enc_hook=str).decode()


_to_stderr = False


def log_to_stderr() -> None:
    """For CLI commands whose stdout is their output (e.g. `keys create` prints the key on its last line)."""
    global _to_stderr
    _to_stderr = True


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stdout` is at the time (test runners swap it), or stderr after `log_to_stderr()`."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr if _to_stderr else sys.stdout
        super().emit(record)


def _shared_processors(instance_id: str) -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        DefaultInstanceId(instance_id),
    ]


def build_structlog_plugin(*, level: str, fmt: str, instance_id: str) -> StructlogPlugin:
    """The app's logging: `fmt` is `json` or `console`; `level` a standard level name."""
    level_name = level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO"
    renderer: Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt.lower() == "console"
        else structlog.processors.JSONRenderer(serializer=_json_serializer)
    )
    shared = _shared_processors(instance_id)
    formatter: dict[str, Any] = {
        "()": structlog.stdlib.ProcessorFormatter,
        "foreign_pre_chain": [*shared, structlog.stdlib.ExtraAdder()],
        "processors": [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            drop_color_message,
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
    }
    handler = {"()": StdoutHandler, "formatter": "standard"}
    stdlib = LoggingConfig(
        formatters={"standard": formatter},
        # Litestar adds `console` and `queue_listener` handlers unless they exist: one writer, no queue thread.
        handlers={"console": handler, "queue_listener": {"class": "logging.NullHandler"}},
        loggers={
            "litestar": {"level": level_name, "handlers": [], "propagate": True},
            "app": {"level": level_name, "handlers": [], "propagate": True},
        },
        root={"handlers": ["console"], "level": level_name},
        log_exceptions="never",  # app.lib.problems logs unexpected errors itself
    )
    config = StructLoggingConfig(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        standard_lib_logging_config=stdlib,
        log_exceptions="never",
        cache_logger_on_first_use=True,
        pretty_print_tty=False,
    )
    return StructlogPlugin(StructlogConfig(structlog_logging_config=config, enable_middleware_logging=False))


# -- access lines --------------------------------------------------------------------------------------


# Access lines are written at most this long after their request (one write per batch, not per line).
FLUSH_DELAY = 0.02


class JsonAccessLog:
    """Writes JSON access lines without the standard library's logging machinery.

    One line per request is the hottest log path there is: through `logging` and the structlog formatter it cost
    about 65 µs (a LogRecord, six processors, a flush per line), a quarter of a cache-hit read. Here it is one
    dict, one msgspec encode, and one write and flush for all lines of the next `FLUSH_DELAY` (20 ms). The line
    has the same shape as every other line (see the module docstring); the level check still follows the
    `app.access` logger, so `LOG_LEVEL` works as before."""

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder(enc_hook=str)
        self._pending: list[bytes] = []
        self._flush_scheduled = False

    def write(self, level: int, fields: dict[str, Any]) -> None:
        line: dict[str, Any] = {"event": "request", **structlog.contextvars.get_contextvars()}
        line["level"] = logging.getLevelName(level).lower()
        line["logger"] = access_logger.name
        line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        line.update(fields)
        self._pending.append(self._encoder.encode(line))
        if not self._flush_scheduled:
            try:
                asyncio.get_running_loop().call_later(FLUSH_DELAY, self.flush)
                self._flush_scheduled = True
            except RuntimeError:  # no loop (not expected in a request): write now
                self.flush()

    def flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        data = b"\n".join(self._pending) + b"\n"
        self._pending.clear()
        stream = sys.stderr if _to_stderr else sys.stdout
        try:
            stream.write(data.decode())
            stream.flush()
        except (OSError, ValueError):  # closed or broken stdout: a lost access line must not fail anything
            pass


# -- middleware ----------------------------------------------------------------------------------------


class RequestContextMiddleware:
    """Outermost ASGI layer: request id in and out, log context, one access line per request.

    It wraps Litestar's whole handler (see `install`), so responses the router or the exception handlers make
    (404 for an unknown path, 401, 413, 500) carry `X-Request-ID` too."""

    def __init__(self, app: ASGIApp, *, instance_id: str, access_log: bool, json_lines: bool = True) -> None:
        self.app = app
        self.instance_id = instance_id
        self.access_log = access_log
        # JSON lines take the fast path; the console format goes through `logging` (it is for humans, not load).
        self.json_access_log = JsonAccessLog() if json_lines else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        request_id = request_id_from_scope(scope)
        header_value = request_id.encode()
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_REQUEST_ID_HEADER_BYTES, header_value)]
            await send(message)

        # A task may serve several requests (keep-alive): start from a clean context each time.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, instance_id=self.instance_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                path: str = scope.get("path", "")
                level = logging.DEBUG if path.startswith(_QUIET_PATHS) else logging.INFO
                if access_logger.isEnabledFor(level):
                    client = scope.get("client")
                    fields = {
                        "method": scope.get("method"),
                        "path": _mask(path),
                        "status": status,
                        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                        # Behind TRUSTED_PROXIES, the address they forwarded for (app.lib.client_address).
                        "client": client[0] if client else None,
                    }
                    if self.json_access_log is not None:
                        self.json_access_log.write(level, fields)
                    else:
                        access_logger.log(level, "request", extra=fields)
            structlog.contextvars.clear_contextvars()


def install(app: Any, *, instance_id: str, access_log: bool, fmt: str = "json") -> None:
    """Puts `RequestContextMiddleware` around a Litestar app's ASGI handler (outside its exception handling)."""
    middleware = RequestContextMiddleware(
        app.asgi_handler, instance_id=instance_id, access_log=access_log, json_lines=fmt.lower() != "console"
    )
    app.asgi_handler = middleware
    if middleware.json_access_log is not None:
        app.on_shutdown.append(middleware.json_access_log.flush)  # the last lines of a stopping instance


async def bind_session_from_path(request: Request[Any, Any, Any]) -> None:
    """A controller's `before_request` hook: the `{session_id}` path parameter goes on the request's log lines."""
    session_id = request.path_params.get("session_id")
    if session_id is not None:
        bind_log_context(session_id=session_id)
