"""`RequestContextMiddleware`: the outermost layer, around Litestar's whole handler."""

from __future__ import annotations

import logging
import time
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.lib.compat.asgi_wrapping import wrap_asgi_handler
from app.lib.logging.access_log import QUIET_PATHS, JsonAccessLog, access_logger
from app.lib.logging.redaction import mask
from app.lib.logging.request_ids import REQUEST_ID_HEADER_BYTES, request_id_from_scope


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
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER_BYTES, header_value)]
            await send(message)

        # A task may serve several requests (keep-alive): start from a clean context each time.
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id, instance_id=self.instance_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if self.access_log:
                path: str = scope.get("path", "")
                level = logging.DEBUG if path.startswith(QUIET_PATHS) else logging.INFO
                if access_logger.isEnabledFor(level):
                    client = scope.get("client")
                    fields = {
                        "method": scope.get("method"),
                        "path": mask(path),
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
    wrap_asgi_handler(app, lambda _inner: middleware)
    if middleware.json_access_log is not None:
        app.on_shutdown.append(middleware.json_access_log.flush)  # the last lines of a stopping instance
