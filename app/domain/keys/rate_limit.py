"""Per-API-key rate limits across all instances.

Every request of a key counts against its `default` budget (`RATE_LIMIT_PER_MINUTE`: requests per key per
minute, all routes). Route handlers may name a further group in `opt["rate_limit_group"]`: starting a run is
the `runs` group, which with `RATE_LIMIT_RUNS_PER_MINUTE` > 0 also has its own, tighter budget; such a request
counts against both and is refused when either is spent. A budget without a limiter is not limited. Runs after
authentication, so the subject is the key's id (never the key). If Valkey is unreachable the request is let
through: limiting is protection, not correctness, and sessions must stay readable."""

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
        budgets = [
            (name, self.limiters[name]) for name in dict.fromkeys((DEFAULT_GROUP, group)) if name in self.limiters
        ]
        if not budgets or not isinstance(user, Principal):
            await next_app(scope, receive, send)
            return
        try:
            decisions = [(name, limiter, await limiter.hit(f"{name}:{user.key_id}")) for name, limiter in budgets]
        except VALKEY_ERRORS:
            await next_app(scope, receive, send)
            return
        # The binding budget: a spent one, else the one with the least left; the headers describe it.
        group, limiter, decision = min(decisions, key=lambda d: (d[2].allowed, d[2].remaining))
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
            detail = f"At most {decision.limit} requests per minute per API key for {group} requests."
            retry = {**headers, "Retry-After": str(decision.reset_after)}
            if handler is not None and handler.opt.get("error_shape") == "openai":
                # /v1 answers in OpenAI's error shape (app.domain.openai.errors).
                from app.domain.openai.errors import error_body

                await ASGIResponse(
                    body=error_body(429, detail, code="rate_limited"),
                    status_code=429,
                    media_type="application/json",
                    headers=retry,
                )(scope, receive, send)
                return
            body = Problem(
                type="https://agent-api.dev/problems/rate-limited",
                title="Rate limit exceeded",
                status=429,
                code="RATE_LIMITED",
                detail=detail,
                instance=scope["path"],
            )
            response = ASGIResponse(
                body=msgspec.json.encode(body),
                status_code=429,
                media_type=PROBLEM_JSON,
                headers=retry,
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
