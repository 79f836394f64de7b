"""CORS with Litestar's own `CORSConfig` (`CORS_ALLOW_ORIGINS`, `CORS_ALLOW_CREDENTIALS`).

Off by default. When on, Litestar answers preflights (`OPTIONS` with `Origin`) before routing and
authentication, and adds `Access-Control-*` headers to every response for an allowed origin, errors included
(its CORS layer sits outside the exception handlers). Browsers may send the headers clients of this API need
and read the ones it answers with (`ALLOW_HEADERS`, `EXPOSE_HEADERS`). A preflight Litestar refuses (origin,
method or header not allowed) is a 400 problem+json with code `CORS_NOT_ALLOWED` instead of its plain text."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec
from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Method, Receive, Scope, Send
from litestar.types.asgi_types import HTTPResponseBodyEvent, HTTPResponseStartEvent

from app.lib.compat.asgi_wrapping import wrap_asgi_handler
from app.lib.problems import PROBLEM_JSON, Problem

ALLOW_METHODS: list[Method] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
ALLOW_HEADERS = [
    "Authorization",
    "X-API-Key",
    "Idempotency-Key",
    "If-Match",
    "If-None-Match",
    "Last-Event-ID",
    "Content-Type",
    "Accept",
    "X-Request-ID",
]
EXPOSE_HEADERS = [
    "ETag",
    "Location",
    "Retry-After",
    "X-Request-ID",
    "Idempotent-Replayed",
    "X-Session-ID",
    "X-Run-ID",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
]
MAX_AGE = 600
# scheme://host[:port], where Litestar lets `*` stand for any part of the host (e.g. https://*.example.com).
_ORIGIN = re.compile(r"https?://[A-Za-z0-9*.\-\[\]:]+")


def build_cors_config(origins: Sequence[str], *, allow_credentials: bool = False) -> CORSConfig | None:
    """The CORS config for these origins, or None (CORS off) when there are none; raises ValueError on an
    origin that is not `*` or `scheme://host[:port]`, and on `*` with credentials (browsers refuse that)."""
    cleaned: list[str] = []
    for origin in origins:
        value = origin.strip().rstrip("/")
        if not value:
            continue
        if value != "*" and not _ORIGIN.fullmatch(value):
            raise ValueError(f"CORS_ALLOW_ORIGINS: {origin!r} is not `*` or an origin like https://app.example.com")
        cleaned.append(value)
    if not cleaned:
        return None
    if "*" in cleaned and allow_credentials:
        raise ValueError("CORS_ALLOW_ORIGINS=* cannot be combined with CORS_ALLOW_CREDENTIALS=true")
    return CORSConfig(
        allow_origins=["*"] if "*" in cleaned else cleaned,
        allow_methods=list(ALLOW_METHODS),
        allow_headers=list(ALLOW_HEADERS),
        expose_headers=list(EXPOSE_HEADERS),
        allow_credentials=allow_credentials,
        max_age=MAX_AGE,
    )


class PreflightProblems:
    """Wraps the app's ASGI handler (outside Litestar's CORS layer): a refused preflight becomes problem+json."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        held: list[HTTPResponseStartEvent] = []
        body = bytearray()

        async def send_problem(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 400:
                held.append(message)
                return
            if message["type"] != "http.response.body" or not held:
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = held[0]
            detail = bytes(body).decode("utf-8", "replace")
            if not detail.startswith("Disallowed CORS"):
                await send(start)
                await send(HTTPResponseBodyEvent(type="http.response.body", body=bytes(body), more_body=False))
                return
            problem = msgspec.json.encode(
                Problem.of(
                    400,
                    "CORS_NOT_ALLOWED",
                    "CORS request not allowed",
                    f"{detail} (see CORS_ALLOW_ORIGINS).",
                    scope.get("path"),
                )
            )
            replaced = (b"content-type", b"content-length")
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in replaced]
            headers += [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", str(len(problem)).encode())]
            await send(HTTPResponseStartEvent(type="http.response.start", status=400, headers=headers))
            await send(HTTPResponseBodyEvent(type="http.response.body", body=problem, more_body=False))

        await self.app(scope, receive, send_problem)


def install(app: Any) -> None:
    """When the app has a CORS config, refused preflights answer problem+json."""
    if app.cors_config is not None:
        wrap_asgi_handler(app, PreflightProblems)
