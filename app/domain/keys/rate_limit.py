"""Per-API-key rate limit across all instances (`RATE_LIMIT_PER_MINUTE`; 0 disables it).

Runs after authentication, so the subject is the key's id (never the key). If Valkey is unreachable the
request is let through: limiting is protection, not correctness, and sessions must stay readable."""

from __future__ import annotations

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.response.base import ASGIResponse
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.domain.keys.auth import Principal
from app.lib.problems import PROBLEM_JSON, Problem
from app.lib.valkey.errors import VALKEY_ERRORS
from app.lib.valkey.rate_limiter import FixedWindowRateLimiter


class RateLimitMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, limiter: FixedWindowRateLimiter) -> None:
        self.limiter = limiter

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        user = scope.get("user")
        if not isinstance(user, Principal):
            await next_app(scope, receive, send)
            return
        try:
            decision = await self.limiter.hit(str(user.key_id))
        except VALKEY_ERRORS:
            await next_app(scope, receive, send)
            return
        headers = {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": str(decision.reset_after),
        }
        if not decision.allowed:
            body = Problem(
                type="https://agent-api.dev/problems/rate-limited",
                title="Rate limit exceeded",
                status=429,
                code="RATE_LIMITED",
                detail=f"At most {decision.limit} requests per minute per API key.",
                instance=scope["path"],
            )
            response = ASGIResponse(
                body=msgspec.json.encode(body),
                status_code=429,
                media_type=PROBLEM_JSON,
                headers={**headers, "Retry-After": str(decision.reset_after)},
            )
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    *((k.lower().encode(), v.encode()) for k, v in headers.items()),
                ]
            await send(message)

        await next_app(scope, receive, send_with_headers)
