"""Per-API-key rate limits across all instances, one budget per route group.

Route handlers name their group in `opt["rate_limit_group"]` (default `default`); starting a run is the
`runs` group (`RATE_LIMIT_RUNS_PER_MINUTE`), everything else `default` (`RATE_LIMIT_PER_MINUTE`). A group
without a limiter is not limited. Runs after authentication, so the subject is the key's id (never the
key). If Valkey is unreachable the request is let through: limiting is protection, not correctness, and
sessions must stay readable."""

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

RATE_LIMIT_GROUP_OPT = "rate_limit_group"
DEFAULT_GROUP = "default"
RUNS_GROUP = "runs"


class RateLimitMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, limiters: dict[str, FixedWindowRateLimiter]) -> None:
        self.limiters = limiters

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        user = scope.get("user")
        handler = scope.get("route_handler")
        group = handler.opt.get(RATE_LIMIT_GROUP_OPT, DEFAULT_GROUP) if handler is not None else DEFAULT_GROUP
        limiter = self.limiters.get(group)
        if limiter is None or not isinstance(user, Principal):
            await next_app(scope, receive, send)
            return
        try:
            decision = await limiter.hit(f"{group}:{user.key_id}")
        except VALKEY_ERRORS:
            await next_app(scope, receive, send)
            return
        # Both the common X-RateLimit-* headers and the IETF draft's RateLimit-* names.
        headers = {
            "X-RateLimit-Limit": str(decision.limit),
            "X-RateLimit-Remaining": str(decision.remaining),
            "X-RateLimit-Reset": str(decision.reset_after),
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset_after),
            "RateLimit-Policy": f"{decision.limit};w={limiter.window}",
        }
        if not decision.allowed:
            body = Problem(
                type="https://agent-api.dev/problems/rate-limited",
                title="Rate limit exceeded",
                status=429,
                code="RATE_LIMITED",
                detail=f"At most {decision.limit} requests per minute per API key for {group} requests.",
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
