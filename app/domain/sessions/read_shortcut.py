"""`SessionReadShortcut`: a cache-hit `GET /api/v1/sessions/{id}` answered in front of Litestar's router.

The cached read is the hottest request there is, and on a hit all it needs is the key check (an in-process
cache), one Valkey GET and the bytes. Through Litestar it also paid for routing, two exception layers, the
authentication, rate-limit and idempotency middleware, dependency injection, the `before_request` hook and the
response machinery: about two thirds of its CPU. This layer sits inside every layer of ours (request id, log
context and access line, request metrics, HEAD and request-target checks, CORS: they all still see it) and
directly outside Litestar. It answers only the plain case, with the same status, headers and body Litestar
would have sent:

- `GET` (or a `HEAD`, which the edge layer hands on as a `GET`) of exactly `/api/v1/sessions/<uuid>`;
- with a key this instance verified less than `AUTH_CACHE_TTL` ago (`ApiKeyAuthenticator.verified_recently`);
- and the session in the cache, owned by that key.

Everything else (no or unknown key, a stale key, a miss, another key's or a deleted session, Valkey trouble, any
other path) goes through Litestar as before. On a miss it hands on what the cache answered (`CacheLookup` in
the scope), so the handler does not ask Valkey a second time: during an outage that would double a timeout.

It is not installed when a rate limit is configured or tracing is on (both belong to every request; the
shortcut would skip them) or when `READ_SHORTCUT=false`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.domain.keys.auth import ApiKeyAuthenticator, key_from_headers
from app.domain.keys.principal import Principal
from app.domain.sessions.cache import CacheMiss, SessionCache
from app.domain.sessions.schemas import Session
from app.lib import metrics
from app.lib.compat.asgi_wrapping import wrap_asgi_handler
from app.lib.logging import bind_log_context

logger = logging.getLogger(__name__)

PREFIX = "/api/v1/sessions/"
# The route's template, as Litestar puts it in the scope: the request metrics label this request by it.
PATH_TEMPLATE = "/api/v1/sessions/{session_id:uuid}"
LOOKUP_SCOPE_KEY = "agent_api.session_cache_lookup"
_UUID_LENGTH = 36
_encoder = msgspec.json.Encoder()
SERVED = metrics.session_read_shortcut.labels("served")
ROUTED = metrics.session_read_shortcut.labels("routed")


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """What the cache answered for this request's session and key (`SessionCache.get`)."""

    session_id: UUID
    owner_key_id: UUID
    outcome: Session | CacheMiss | None


def cache_lookup_of(scope: Scope) -> CacheLookup | None:
    lookup = scope.get(LOOKUP_SCOPE_KEY)
    return lookup if isinstance(lookup, CacheLookup) else None


class SessionReadShortcut:
    def __init__(self, app: ASGIApp, *, authenticator: ApiKeyAuthenticator, cache: SessionCache) -> None:
        self.app = app
        self.authenticator = authenticator
        self.cache = cache

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session_id = _session_id(scope)
        if session_id is None:
            await self.app(scope, receive, send)
            return
        key = key_from_headers(scope["headers"])
        principal = self.authenticator.verified_recently(key) if key else None
        if principal is None:
            ROUTED.inc()
            await self.app(scope, receive, send)
            return
        try:
            outcome = await self.cache.get(session_id, principal.key_id)
        except Exception:  # the regular path answers whatever this was, in its problem shape
            logger.exception("session read shortcut failed; answering through the router")
            ROUTED.inc()
            await self.app(scope, receive, send)
            return
        if not isinstance(outcome, Session):
            scope[LOOKUP_SCOPE_KEY] = CacheLookup(session_id, principal.key_id, outcome)  # type: ignore[literal-required]
            ROUTED.inc()
            await self.app(scope, receive, send)
            return
        SERVED.inc()
        _as_routed(scope, principal)
        bind_log_context(session_id=session_id)
        body = _encoder.encode(outcome)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"etag", b'"%d"' % outcome.version),
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _session_id(scope: Scope) -> UUID | None:
    """The session id of a `GET /api/v1/sessions/<uuid>`, else None."""
    if scope["type"] != ScopeType.HTTP or scope["method"] != "GET" or scope.get("root_path"):
        return None
    path: str = scope["path"]
    if len(path) != len(PREFIX) + _UUID_LENGTH or not path.startswith(PREFIX):
        return None
    try:
        return UUID(path[len(PREFIX) :])
    except ValueError:
        return None


def _as_routed(scope: Any, principal: Principal) -> None:
    """What Litestar's router and authentication leave in the scope, for the layers outside (metrics)."""
    scope["path_template"] = PATH_TEMPLATE
    scope["user"] = principal
    scope["auth"] = None


def install(app: Any, *, authenticator: ApiKeyAuthenticator, cache: SessionCache) -> None:
    """Puts the shortcut directly around Litestar's ASGI handler: call before any other `install`."""
    wrap_asgi_handler(app, lambda inner: SessionReadShortcut(inner, authenticator=authenticator, cache=cache))
